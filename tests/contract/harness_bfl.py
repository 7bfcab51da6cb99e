"""Contract harness for the BFL adapter against the BFL emulator."""

from __future__ import annotations

from imagegate.emulators.bfl import BflEmulator
from imagegate.telemetry import Telemetry
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings

from .harness import Harness

KEY = "bfl-contract-key-5c81e0aa"


async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness:
    """A BFL emulator on loopback and a BflAdapter pointed at it."""
    emulator = BflEmulator(key=KEY, poll_retry_after=0.02)
    base_url = await emulator.start()
    settings = BflSettings(
        key=KEY if enabled else None,
        base_url=base_url,
        poll_interval_seconds=0.02,
        max_poll_interval_seconds=0.05,
    )
    return Harness(
        provider="bfl",
        emulator=emulator,
        adapter=BflAdapter(settings, telemetry=telemetry),
        model="flux-dev",
        key=KEY,
        width=512,
        height=384,
    )
