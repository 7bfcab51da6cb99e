"""Work queued behind `Replied` runs only once its RPC has answered, and never waits forever."""

from __future__ import annotations

import asyncio
import time

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.replied import Replied
from imagegate.grpckit.server import start_server
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc


async def test_work_after_the_reply_starts_only_when_the_rpc_has_ended() -> None:
    events: list[str] = []
    background: set[asyncio.Task[None]] = set()

    async def follow_up() -> None:
        events.append("follow-up")

    class Probe(provider_pb2_grpc.ProviderServiceServicer):
        async def DescribeProvider(self, request, context):
            task = asyncio.create_task(Replied.of(context).then(follow_up()))
            background.add(task)
            # The handler still has work to do: the follow-up must not run in between.
            await asyncio.sleep(0.05)
            events.append("handler returned")
            return provider_pb2.DescribeProviderResponse(provider="probe")

    running = await start_server(
        address="127.0.0.1:0",
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(Probe(), s)],
        service_names=[],
        domain="test.replied",
    )
    try:
        async with create_channel(running.address) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
        await asyncio.wait_for(asyncio.gather(*background), 2)
    finally:
        await running.stop(0)
    assert events == ["handler returned", "follow-up"]


async def test_without_an_rpc_work_runs_at_once_and_a_missing_callback_is_capped() -> None:
    class NoCallbacks:
        def add_done_callback(self, _callback: object) -> None:
            raise NotImplementedError

    assert Replied.of(NoCallbacks()).is_set()
    assert Replied.already().is_set()

    class Silent:
        def add_done_callback(self, _callback: object) -> None:
            """Accepts the callback and never calls it."""

    never = Replied.of(Silent())
    assert not never.is_set()
    started = time.perf_counter()
    await never.wait(cap=0.1)
    assert 0.09 <= time.perf_counter() - started < 1.0
