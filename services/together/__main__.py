"""Entry point: `python -m services.together`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings


def main() -> None:
    """Builds settings once and runs the Together adapter until SIGTERM."""
    settings = TogetherSettings()
    run_adapter(
        lambda telemetry: TogetherAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="together",
    )


if __name__ == "__main__":
    main()
