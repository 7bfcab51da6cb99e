"""Entry point: `python -m services.replicate`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings


def main() -> None:
    """Builds settings once and runs the Replicate adapter until SIGTERM."""
    settings = ReplicateSettings()
    run_adapter(
        lambda telemetry: ReplicateAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="replicate",
    )


if __name__ == "__main__":
    main()
