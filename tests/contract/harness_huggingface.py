"""Contract harness for the Hugging Face adapter: FLUX.1 schnell through the router to Together."""

from __future__ import annotations

from pydantic import SecretStr

from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.telemetry import Telemetry
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from services.huggingface.wire import FLUX_SCHNELL

from .harness import Harness

KEY = "hf_contractSecretToken0b3e9d71"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """An HF router emulator and an adapter pointed at it."""
    emulator = HuggingFaceEmulator(key=KEY)
    base_url = await emulator.start()
    settings = HuggingFaceSettings(key=SecretStr(KEY) if enabled else None, base_url=base_url)
    # The suite's one model is the partner route: hf-inference answers bytes inline, so it has no
    # result URL that could expire. tests/adapters/test_huggingface.py runs every fault on hf-inference.
    return Harness(
        provider="huggingface",
        emulator=emulator,
        adapter=HuggingFaceAdapter(settings, telemetry=telemetry),
        model=FLUX_SCHNELL,
        key=KEY,
        width=512,
        height=512,
        reports_provider_seconds=True,
        reports_progress=False,
    )
