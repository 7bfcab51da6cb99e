"""Entry point: `python -m services.comfyui`."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.comfyui.adapter import ComfyUIAdapter
from services.comfyui.config import ComfyUISettings


def main() -> None:
    """Builds settings once and runs the ComfyUI adapter until SIGTERM."""
    settings = ComfyUISettings()
    run_adapter(
        lambda telemetry: ComfyUIAdapter(settings, telemetry=telemetry),
        address=settings.addr,
        common=CommonSettings(),
        name="comfyui",
    )


if __name__ == "__main__":
    main()
