"""Contract harness for the Hugging Face adapter's nscale route of FLUX.1 [schnell]."""

from __future__ import annotations

from imagegate.telemetry import Telemetry
from services.huggingface.wire import NSCALE

from .harness import Harness
from .hf_partner import KEY, partner_harness

__all__ = ["KEY", "create_harness"]


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """The nscale route against the HF router emulator."""
    return await partner_harness(telemetry, NSCALE, enabled=enabled, reports_provider_seconds=False)
