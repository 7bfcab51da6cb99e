"""Contract harness for the OpenAI Images adapter against its emulator."""

from __future__ import annotations

from pydantic import SecretStr

from imagegate.emulators.openai import OpenAIEmulator
from imagegate.telemetry import Telemetry
from services.openai.adapter import OpenAIAdapter
from services.openai.config import OpenAISettings

from .harness import Harness

KEY = "sk-proj-contract-secret-5d0c9a7e41"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """An OpenAI emulator and an adapter pointed at it (gpt-image-1, 1024x1024)."""
    emulator = OpenAIEmulator(key=KEY)
    base_url = await emulator.start()
    settings = OpenAISettings(key=SecretStr(KEY) if enabled else None, base_url=base_url)
    return Harness(
        provider="openai",
        emulator=emulator,
        adapter=OpenAIAdapter(settings, telemetry=telemetry),
        model="gpt-image-1",
        key=KEY,
        width=1024,
        height=1024,
        # OpenAI bills tokens and reports no compute time.
        reports_provider_seconds=False,
        reports_progress=False,
    )
