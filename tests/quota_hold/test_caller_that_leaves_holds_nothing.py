"""A caller that gives up during ReserveQuota (tiny deadline or cancel) holds no quota after."""

from __future__ import annotations

import asyncio
import random

import grpc

from imagegate.quota.v1 import quota_pb2
from tests.quota_hold.conftest import Quota

GAVE_UP = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


async def _reserved_after(q: Quota, tenant_id: str, seconds: float = 1.0) -> int:
    """Reserved images once they reach 0, or after `seconds` (in-flight writes may still land)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    reserved = await q.reserved(tenant_id)
    while reserved and loop.time() < end:
        await asyncio.sleep(0.05)
        reserved = await q.reserved(tenant_id)
    return reserved


async def _give_up(
    q: Quota, request_id: str, api_key: str, *, timeout: float = 0.0
) -> quota_pb2.Reservation | None:
    """One ReserveQuota whose caller leaves early (its deadline, else a cancel within 10 ms);
    the reservation when it was answered all the same."""
    req = quota_pb2.ReserveQuotaRequest(request_id=request_id, api_key=api_key, images=1)
    if timeout:
        call = q.stub.ReserveQuota(req, timeout=timeout)
    else:
        call = q.stub.ReserveQuota(req, timeout=10)
        await asyncio.sleep(random.uniform(0, 0.01))
        call.cancel()
    try:
        return (await call).reservation
    except grpc.aio.AioRpcError as err:
        assert err.code() in GAVE_UP, err
    except asyncio.CancelledError:
        pass
    return None


async def test_200_reserves_past_deadlines_of_1_to_20ms_leave_nothing_reserved(
    quota_process: Quota,
) -> None:
    t = await quota_process.tenant("late", plan="pro")
    key = await quota_process.key(t.id)
    answered = await asyncio.gather(
        *(_give_up(quota_process, f"r{i}", key, timeout=(i % 20 + 1) / 1000) for i in range(200))
    )
    # An answer that did arrive is the caller's hold to settle, not a leak.
    held = sum(r is not None and r.state == quota_pb2.RESERVATION_STATE_PENDING for r in answered)
    assert await _reserved_after(quota_process, t.id) == held


async def test_callers_that_time_out_or_cancel_then_release_by_request_id_hold_nothing(
    quota_process: Quota,
) -> None:
    t = await quota_process.tenant("leaver", plan="pro")
    key = await quota_process.key(t.id)

    async def like_the_router(i: int) -> None:
        request_id = f"r{i}"
        timeout = 0.0 if i % 2 else 0.001 if i % 4 == 0 else (i % 20 + 1) / 1000
        reservation = await _give_up(quota_process, request_id, key, timeout=timeout)
        if reservation is None:
            # What the Router does when its ReserveQuota ends in DEADLINE_EXCEEDED or CANCELLED:
            # the write may still be in flight, so the release may come first (a tombstone).
            ref = quota_pb2.RequestRef(request_id=request_id, api_key=key)
            await quota_process.stub.ReleaseReservation(
                quota_pb2.ReleaseReservationRequest(by_request=ref)
            )
        else:
            await quota_process.stub.ReleaseReservation(
                quota_pb2.ReleaseReservationRequest(reservation_id=reservation.id)
            )

    await asyncio.gather(*(like_the_router(i) for i in range(200)))
    assert await _reserved_after(quota_process, t.id) == 0
