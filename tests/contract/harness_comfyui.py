"""Contract harness for the ComfyUI adapter: the bundled sd-2.1 workflow against the emulator."""

from __future__ import annotations

import grpc
from pydantic import SecretStr

from imagegate.emulators.comfyui import ComfyUIEmulator
from imagegate.grpckit import reasons
from imagegate.telemetry import Telemetry
from services.comfyui.adapter import ComfyUIAdapter
from services.comfyui.config import ComfyUISettings

from .harness import Expect, Harness

KEY = "comfy-proxy-token-5e7c0a91d2"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """A ComfyUI emulator behind a bearer-token proxy, and an adapter pointed at it."""
    emulator = ComfyUIEmulator(key=KEY)
    base_url = await emulator.start()
    # Off means no server URL configured (the token alone turns nothing on).
    settings = ComfyUISettings(key=SecretStr(KEY), base_url=base_url if enabled else "")
    return Harness(
        provider="comfyui",
        emulator=emulator,
        adapter=ComfyUIAdapter(settings, telemetry=telemetry),
        model="sd-2.1",
        key=KEY,
        width=512,
        height=512,
        reports_provider_seconds=True,
        reports_progress=True,
        expectations={
            # ComfyUI moderates nothing; the emulator's "moderation" is a node failing on the
            # server (execution_error), which another candidate may not share.
            "moderation": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE),
        },
    )
