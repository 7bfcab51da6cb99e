"""Contract harness for the fal adapter against the fal emulator."""

from __future__ import annotations

from imagegate.emulators.fal import FalEmulator
from imagegate.telemetry import Telemetry
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings

from .harness import Harness

KEY = "fal-key-id:fal-secret-7f3a9c"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """A fal emulator on loopback and a FalAdapter pointed at it."""
    emulator = FalEmulator(key=KEY)
    base_url = await emulator.start()
    settings = FalSettings(
        key=KEY if enabled else None,
        base_url=base_url,
        poll_interval_seconds=0.02,
        max_poll_interval_seconds=0.05,
    )
    adapter = FalAdapter(settings, telemetry=telemetry)
    return Harness(
        provider="fal",
        emulator=emulator,
        adapter=adapter,
        model="fal-ai/flux/schnell",
        key=KEY,
        width=512,
        height=384,
    )
