"""Contract harness for the Hugging Face adapter's fal-ai route of FLUX.1 [schnell]."""

from __future__ import annotations

from imagegate.telemetry import Telemetry
from services.huggingface.wire import FAL

from .harness import Harness
from .hf_partner import KEY, partner_harness

__all__ = ["KEY", "create_harness"]


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """The fal route against the HF router emulator."""
    return await partner_harness(telemetry, FAL, enabled=enabled)
