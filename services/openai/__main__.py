"""Entry point: `python -m services.openai`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.openai.adapter import OpenAIAdapter
from services.openai.config import OpenAISettings


def main() -> None:
    """Builds settings once and runs the OpenAI adapter until SIGTERM."""
    settings = OpenAISettings()
    run_adapter(
        lambda telemetry: OpenAIAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="openai",
    )


if __name__ == "__main__":
    main()
