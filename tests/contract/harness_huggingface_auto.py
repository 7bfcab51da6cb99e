"""Contract harness for the Hugging Face adapter's auto route of FLUX.1 [schnell]."""

from __future__ import annotations

from pydantic import SecretStr

from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.telemetry import Telemetry
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from services.huggingface.wire import AUTO, FLUX_SCHNELL, partner_route

from .harness import Harness

KEY = "hf_contractSecretToken0b3e9d71"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """An HF router emulator and an adapter pointed at it, generating through auto."""
    emulator = HuggingFaceEmulator(key=KEY)
    # The account puts a partner this adapter does not speak first: auto passes it over.
    emulator.provider_order = ["replicate", "fal-ai", "together"]
    base_url = await emulator.start()
    settings = HuggingFaceSettings(
        key=SecretStr(KEY) if enabled else None, base_url=base_url, hub_url=base_url
    )
    return Harness(
        provider="huggingface",
        emulator=emulator,
        adapter=HuggingFaceAdapter(settings, telemetry=telemetry),
        model=partner_route(FLUX_SCHNELL, AUTO),
        key=KEY,
        width=512,
        height=512,
        reports_provider_seconds=True,
        reports_progress=False,
    )
