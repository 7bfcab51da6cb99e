"""Repeats of a finished request_id that this replica no longer remembers: the shared store answers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2
from services.router.idempotency import IdempotencyCache
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
PRO = bearer("key-pro")


def _request(prompt: str) -> router_pb2.GenerateImageRequest:
    return router_pb2.GenerateImageRequest(
        request_id="kept-1", prompt=prompt, model="flux-schnell", width=256, height=256
    )


async def test_a_repeat_whose_hold_no_longer_matches_replays_the_stored_result() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        first = await s.stub.GenerateImage(_request("fox"), metadata=PRO)
        # Another replica (or this one after a restart): nothing in memory, and Quota refuses
        # the repeat's hold because the price changed since the first run.
        for _ in range(1000):  # stored by a task just after the reply
            if await s.app.dedupe.generations.find("t_pro", "kept-1", None) is not None:
                break
            await asyncio.sleep(0.01)
        s.app.dedupe.cache = IdempotencyCache(
            retention_seconds=600, max_entries=100, max_bytes=1 << 20
        )
        s.quota.repeats_differ = True
        again = await s.stub.GenerateImage(_request("fox"), metadata=PRO)
        assert again.images[0].data == first.images[0].data
        assert len(fal.calls) == 1
        with pytest.raises(grpc.aio.AioRpcError) as other_body:
            await s.stub.GenerateImage(_request("a different prompt"), metadata=PRO)
        assert parse_rpc_error(other_body.value).reason == reasons.IDEMPOTENCY_KEY_REUSED
        assert len(fal.calls) == 1
    finally:
        await s.stop()
