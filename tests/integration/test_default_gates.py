"""A stack on default settings holds far more than 8 generations at a slow provider at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from imagegate.devstack.emulated import start_emulators
from imagegate.emulators.base import Emulator
from imagegate.grpckit.channel import create_channel
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings
from services.fal.config import FalSettings
from services.huggingface.config import HuggingFaceSettings
from services.local.config import LocalSettings
from services.openai.config import OpenAISettings
from services.replicate.config import ReplicateSettings
from services.together.config import TogetherSettings
from tests.integration.conftest import RunningStack, start_stack

# Requests held at once; the old OpenAI default gate (8) would have held 8 of them.
HELD = 96
# Seconds the emulators take per generation: far longer than sending HELD requests takes.
SLOW = 60.0


@pytest.fixture(scope="module")
async def slow_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningStack, dict[str, Emulator]]]:
    env: dict[str, str] = {}
    emulators = await start_emulators(env, ["openai", "together", "huggingface"], latency=SLOW)
    running = await start_stack(tmp_path_factory.mktemp("gates") / "data", **env)
    yield running, emulators
    await running.stack.stop()
    for emulator in emulators.values():
        await emulator.stop()


@pytest.mark.parametrize(
    ("provider", "model", "size"),
    [
        ("openai", "gpt-image-1-mini", 1024),
        ("together", "flux-schnell", 256),
        ("huggingface", "flux-schnell", 256),
    ],
)
async def test_default_stack_holds_far_more_than_eight_calls_at_a_slow_provider(
    slow_stack: tuple[RunningStack, dict[str, Emulator]], provider: str, model: str, size: int
) -> None:
    running, emulators = slow_stack
    emulator = emulators[provider]
    emulator.reset_peak()
    auth = (("authorization", f"Bearer {running.api_key}"),)
    async with create_channel(running.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        calls = [
            asyncio.ensure_future(
                stub.GenerateImage(
                    router_pb2.GenerateImageRequest(
                        prompt=f"a slow fox {i}",
                        model=model,
                        width=size,
                        height=size,
                        allowed_providers=[provider],
                    ),
                    metadata=auth,
                    timeout=SLOW * 2,
                )
            )
            for i in range(HELD)
        ]
        try:
            # Counted at the emulator: every request is inside the provider at the same time.
            await emulator.wait_until(lambda: emulator.in_flight >= HELD, timeout=SLOW - 10)
            assert emulator.peak_in_flight == HELD
            done = [c for c in calls if c.done()]
            assert not done, [c.exception() for c in done]
        finally:
            for call in calls:
                call.cancel()
            for call in calls:
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await call


def test_every_adapter_gate_defaults_to_what_its_provider_allows() -> None:
    # Providers that limit requests per minute (429 above it) or queue above their concurrency
    # get a gate in the hundreds; BFL rejects above 24 active tasks per account (help.bfl.ai),
    # so its gate is that documented account limit and the Router queues the rest.
    hundreds = [
        OpenAISettings(),
        TogetherSettings(),
        HuggingFaceSettings(),
        ReplicateSettings(),
        FalSettings(),
        LocalSettings(),
    ]
    for settings in hundreds:
        assert settings.max_concurrency >= 256, type(settings).__name__
    assert BflAdapter(BflSettings()).max_concurrency == 24
