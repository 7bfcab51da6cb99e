"""Background settlement: the reply does not wait for Quota, yet the caller reads its own writes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from imagegate.router.v1 import router_pb2
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from tests.fixtures.fakes import FakeQuota
from tests.fixtures.router_stack import bearer, start_stack

SLOW_COMMIT = 0.4


async def test_reply_before_commit_then_reads_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    original = FakeQuota.CommitReservation

    async def slow_commit(self: FakeQuota, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(SLOW_COMMIT)
        return await original(self, request, context)

    monkeypatch.setattr(FakeQuota, "CommitReservation", slow_commit)
    stack = await start_stack({"local": LocalAdapter(LocalSettings())}, settle_before_reply=False)
    try:
        started = time.monotonic()
        resp = await stack.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="bg-1", prompt="a chest", width=64, height=64
            ),
            metadata=bearer("key-pro"),
            timeout=10,
        )
        replied = time.monotonic() - started
        assert len(resp.images) == 1
        assert replied < SLOW_COMMIT, "the reply did not wait for the commit"
        assert stack.quota.tenant("t_pro").used_images == 0  # still in delivery
        quota = await stack.stub.GetQuota(
            router_pb2.GetQuotaRequest(), metadata=bearer("key-pro"), timeout=5
        )
        assert quota.quota.used_images == 1 and quota.quota.reserved_images == 0
        assert ("t_pro", "bg-1") in stack.metering.records
        # An idempotent repeat also sees the settled state before it is answered.
        again = await stack.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="bg-1", prompt="a chest", width=64, height=64
            ),
            metadata=bearer("key-pro"),
            timeout=10,
        )
        assert again.images[0].data == resp.images[0].data
        assert stack.quota.tenant("t_pro").used_images == 1
    finally:
        await stack.stop()
