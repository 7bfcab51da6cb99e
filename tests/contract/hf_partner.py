"""One builder for the Hugging Face partner-route contract harnesses (fal-ai, nscale, replicate, auto)."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.telemetry import Telemetry
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from services.huggingface.wire import FLUX_SCHNELL, partner_route

from .harness import Harness

KEY = "hf_contractSecretToken0b3e9d71"


async def partner_harness(
    telemetry: Telemetry,
    partner: str,
    *,
    enabled: bool = True,
    reports_provider_seconds: bool = True,
    provider_order: list[str] | None = None,
    **settings: Any,
) -> Harness:
    """An HF router emulator and an adapter pointed at it, generating FLUX.1 [schnell] through
    `partner` (`provider_order`: the account's partner order the emulator reports)."""
    emulator = HuggingFaceEmulator(key=KEY)
    if provider_order is not None:
        emulator.provider_order = provider_order
    base_url = await emulator.start()
    config = HuggingFaceSettings(
        key=SecretStr(KEY) if enabled else None, base_url=base_url, hub_url=base_url, **settings
    )
    return Harness(
        provider="huggingface",
        emulator=emulator,
        adapter=HuggingFaceAdapter(config, telemetry=telemetry),
        model=partner_route(FLUX_SCHNELL, partner),
        key=KEY,
        width=512,
        height=512,
        reports_provider_seconds=reports_provider_seconds,
        reports_progress=False,
    )
