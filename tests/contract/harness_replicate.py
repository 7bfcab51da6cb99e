"""Contract harness for the Replicate adapter against the Replicate emulator."""

from __future__ import annotations

from imagegate.emulators.replicate import ReplicateEmulator
from imagegate.telemetry import Telemetry
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings

from .harness import Harness

KEY = "r8_contractTestToken4d2e9b"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """A Replicate emulator on loopback and a ReplicateAdapter pointed at it."""
    emulator = ReplicateEmulator(key=KEY)
    base_url = await emulator.start()
    settings = ReplicateSettings(
        key=KEY if enabled else None,
        base_url=base_url,
        poll_interval_seconds=0.02,
        max_poll_interval_seconds=0.05,
    )
    return Harness(
        provider="replicate",
        emulator=emulator,
        adapter=ReplicateAdapter(settings, telemetry=telemetry),
        model="black-forest-labs/flux-schnell",
        key=KEY,
        width=512,
        height=512,
    )
