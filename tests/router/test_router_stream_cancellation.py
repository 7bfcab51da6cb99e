"""A StreamGenerateImage the client cancels mid-stream leaves no pending task behind."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import HANG, ControllableAdapter, spec
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
CANCELLATIONS = 12


async def _cancel_after_progress(stub, request_id: str) -> None:
    call = stub.StreamGenerateImage(
        router_pb2.StreamGenerateImageRequest(
            request=router_pb2.GenerateImageRequest(
                request_id=request_id, prompt="x", model="flux-schnell", width=256, height=256
            )
        ),
        metadata=bearer("key-pro"),
        timeout=30,
    )
    kinds = []
    async for event in call:
        kinds.append(event.WhichOneof("event"))
        if "progress" in kinds:
            break
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert kinds[0] == "accepted" and "attempt_started" in kinds


async def test_client_cancellations_mid_stream_leave_no_pending_task(caplog) -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=HANG)
    s = await start_stack({"fal": fal})
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        for i in range(CANCELLATIONS):
            await _cancel_after_progress(s.stub, f"cancel-{i}")
        # Up to 15 s: on a loaded 2-core machine a cancellation can take seconds to reach the adapter.
        for _ in range(750):
            if fal.cancelled == CANCELLATIONS and fal.active == 0:
                break
            await asyncio.sleep(0.02)
        assert fal.cancelled == CANCELLATIONS and fal.active == 0
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
        destroyed = [r for r in caplog.records if "Task was destroyed" in r.getMessage()]
        assert destroyed == [], destroyed[0].getMessage()
        # The Router still answers: nothing it needs was left waiting on a dead stream.
        fal.default = "ok"
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="after", prompt="x", model="flux-schnell", width=256, height=256
            ),
            metadata=bearer("key-pro"),
            timeout=10,
        )
        assert resp.provider == "fal"
    finally:
        await s.stop()
