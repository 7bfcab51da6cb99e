"""Entry point: `python -m services.bfl`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings


def main() -> None:
    """Builds settings once and runs the BFL adapter until SIGTERM."""
    settings = BflSettings()
    run_adapter(
        lambda telemetry: BflAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="bfl",
    )


if __name__ == "__main__":
    main()
