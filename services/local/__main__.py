"""Entry point: `python -m services.local`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings


def main() -> None:
    """Builds settings once and runs the local adapter until SIGTERM."""
    settings = LocalSettings()
    run_adapter(
        lambda _telemetry: LocalAdapter(settings),
        address=settings.addr,
        common=CommonSettings(),
        name="local",
    )


if __name__ == "__main__":
    main()
