"""Callers who give up (1 ms deadlines, cancellations) leave no quota held behind them."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid

import grpc

from imagegate.grpckit.channel import create_channel
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import RunningStack


async def _reserved(stub: router_pb2_grpc.RouterServiceStub, key: str) -> int:
    resp = await stub.GetQuota(
        router_pb2.GetQuotaRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
    )
    return resp.quota.reserved_images


async def test_two_hundred_abandoned_requests_leave_nothing_reserved(
    running_stack: RunningStack,
) -> None:
    key = running_stack.api_key
    auth = (("authorization", f"Bearer {key}"),)
    async with create_channel(running_stack.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        # Warm the Router's key cache so the 1 ms calls reach ReserveQuota.
        await stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=auth, timeout=10)

        def request() -> router_pb2.GenerateImageRequest:
            return router_pb2.GenerateImageRequest(
                prompt="fox",
                model="local",
                width=64,
                height=64,
                request_id=f"gone-{uuid.uuid4().hex}",
            )

        async def timed_out() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.GenerateImage(request(), metadata=auth, timeout=0.001)

        async def cancelled() -> None:
            call = stub.GenerateImage(request(), metadata=auth, timeout=10)
            await asyncio.sleep(random.uniform(0, 0.01))
            call.cancel()
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call

        await asyncio.gather(*(timed_out() for _ in range(200)))
        given_up = time.monotonic()
        reserved = await _reserved(stub, key)
        while reserved and time.monotonic() - given_up < 1.0:
            await asyncio.sleep(0.05)
            reserved = await _reserved(stub, key)
        took = time.monotonic() - given_up
        assert reserved == 0 and took <= 1.0, f"{reserved} images reserved after {took:.2f}s"

        await asyncio.gather(*(cancelled() for _ in range(100)))
        given_up = time.monotonic()
        reserved = await _reserved(stub, key)
        while reserved and time.monotonic() - given_up < 5.0:
            await asyncio.sleep(0.05)
            reserved = await _reserved(stub, key)
        assert reserved == 0, f"{reserved} images still reserved after the callers cancelled"
