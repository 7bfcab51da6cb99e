"""Contract harness for the Hugging Face adapter's auto route (the account's order puts a partner the adapter does not speak first) of FLUX.1 [schnell]."""

from __future__ import annotations

from imagegate.telemetry import Telemetry
from services.huggingface.wire import AUTO

from .harness import Harness
from .hf_partner import KEY, partner_harness

__all__ = ["KEY", "create_harness"]


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """The auto route against the HF router emulator."""
    return await partner_harness(
        telemetry, AUTO, enabled=enabled, provider_order=["replicate", "fal-ai", "together"]
    )
