"""Entry point: `python -m services.fal`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings


def main() -> None:
    """Builds settings once and runs the fal adapter until SIGTERM."""
    settings = FalSettings()
    run_adapter(
        lambda telemetry: FalAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="fal",
    )


if __name__ == "__main__":
    main()
