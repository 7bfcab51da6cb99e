"""Entry point: `python -m services.huggingface`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings


def main() -> None:
    """Builds settings once and runs the Hugging Face adapter until SIGTERM."""
    settings = HuggingFaceSettings()
    run_adapter(
        lambda telemetry: HuggingFaceAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="huggingface",
    )


if __name__ == "__main__":
    main()
