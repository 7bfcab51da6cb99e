"""Contract harness for the Together adapter against its emulator."""

from __future__ import annotations

from pydantic import SecretStr

from imagegate.emulators.together import FLUX_SCHNELL, TogetherEmulator
from imagegate.telemetry import Telemetry
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings

from .harness import Harness

KEY = "tgp_v1_contract-secret-8c1f0e2d7b"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """A Together emulator and an adapter pointed at it."""
    emulator = TogetherEmulator(key=KEY)
    base_url = await emulator.start()
    settings = TogetherSettings(key=SecretStr(KEY) if enabled else None, base_url=base_url)
    return Harness(
        provider="together",
        emulator=emulator,
        adapter=TogetherAdapter(settings, telemetry=telemetry),
        model=FLUX_SCHNELL,
        key=KEY,
        width=512,
        height=512,
        reports_provider_seconds=True,
        reports_progress=False,
    )
