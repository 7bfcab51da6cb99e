"""An EnhancerService on loopback pointed at chat emulators, one emulator per text provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from imagegate.emulators.chat import ChatEmulator
from imagegate.enhancer.v1 import enhancer_pb2_grpc
from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import RunningServer
from imagegate.telemetry import Telemetry
from services.enhancer.config import EnhancerSettings
from services.enhancer.enhancer import PromptEnhancer
from services.enhancer.server import start_enhancer

KEYS = {"groq": "gsk-test-groq-key", "cerebras": "csk-test-cerebras-key"}


class FakeClock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class EnhancerStack:
    """The enhancer, its emulators and a stub."""

    running: RunningServer
    enhancer: PromptEnhancer
    emulators: dict[str, ChatEmulator]
    channel: grpc.aio.Channel
    clock: FakeClock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stub(self) -> enhancer_pb2_grpc.EnhancerServiceStub:
        """A stub on the shared channel."""
        return enhancer_pb2_grpc.EnhancerServiceStub(self.channel)

    async def stop(self) -> None:
        """Stops everything."""
        await self.channel.close()
        await self.running.stop(0.1)
        await self.enhancer.aclose()
        for emulator in self.emulators.values():
            await emulator.stop()


async def start_enhancer_stack(
    providers: tuple[str, ...] = ("groq", "cerebras"),
    telemetry: Telemetry | None = None,
    transport: Transport | None = None,
    **settings: Any,
) -> EnhancerStack:
    """Starts one emulator per provider and an enhancer with those providers' keys only."""
    emulators: dict[str, ChatEmulator] = {}
    for name in providers:
        emulator = ChatEmulator(key=KEYS[name])
        await emulator.start()
        emulators[name] = emulator
    values: dict[str, Any] = {
        "order": ",".join(providers),
        "base_urls": ",".join(f"{n}={e.base_url}/v1" for n, e in emulators.items()),
        **{f"{n}_key": KEYS[n] for n in providers},
        **settings,
    }
    clock = FakeClock()
    running, enhancer = await start_enhancer(
        EnhancerSettings(**values),
        telemetry,
        address="127.0.0.1:0",
        clock=clock,
        transport=transport,
    )
    channel = grpc.aio.insecure_channel(running.address)
    return EnhancerStack(running, enhancer, emulators, channel, clock)
