"""Contract harness for the Hugging Face adapter's replicate route (Replicate's polled predictions) of FLUX.1 [schnell]."""

from __future__ import annotations

from imagegate.telemetry import Telemetry
from services.huggingface.wire import REPLICATE

from .harness import Harness
from .hf_partner import KEY, partner_harness

__all__ = ["KEY", "create_harness"]


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """The replicate route against the HF router emulator."""
    return await partner_harness(
        telemetry,
        REPLICATE,
        enabled=enabled,
        poll_interval_seconds=0.02,
        max_poll_interval_seconds=0.05,
    )
