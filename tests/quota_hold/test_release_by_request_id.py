"""ReleaseReservation by (tenant, request_id): releases a hold, or leaves a tombstone that a late
ReserveQuota of that request_id returns without holding anything; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from services.quota.store import ReserveArgs, ReserveResult
from tests.quota_hold.conftest import Quota

PENDING = quota_pb2.RESERVATION_STATE_PENDING
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED


def _by_request(
    request_id: str, *, tenant_id: str = "", api_key: str = ""
) -> quota_pb2.ReleaseReservationRequest:
    ref = quota_pb2.RequestRef(request_id=request_id, tenant_id=tenant_id, api_key=api_key)
    return quota_pb2.ReleaseReservationRequest(by_request=ref)


def _reserve(request_id: str, **kw: object) -> quota_pb2.ReserveQuotaRequest:
    return quota_pb2.ReserveQuotaRequest(request_id=request_id, **kw)  # type: ignore[arg-type]


async def _error(call: object) -> ParsedStatus:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return parse_rpc_error(info.value)


async def test_release_by_request_id_before_the_reserve_makes_the_reserve_hold_nothing(
    quota: Quota,
) -> None:
    t = await quota.tenant("early")
    key = await quota.key(t.id)
    tomb = (await quota.stub.ReleaseReservation(_by_request("r1", api_key=key))).reservation
    assert (tomb.state, tomb.tenant_id, tomb.request_id, tomb.images) == (RELEASED, t.id, "r1", 0)
    late = (await quota.stub.ReserveQuota(_reserve("r1", api_key=key, images=2))).reservation
    assert late == tomb
    by_tenant = await quota.stub.ReserveQuota(_reserve("r1", tenant_id=t.id, images=5))
    assert by_tenant.reservation == tomb
    assert await quota.reserved(t.id) == 0
    # The tombstone holds nothing and stays released.
    err = await _error(
        quota.stub.CommitReservation(
            quota_pb2.CommitReservationRequest(reservation_id=tomb.id, images=0)
        )
    )
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.RESERVATION_NOT_PENDING,
    )


async def test_release_by_request_id_after_a_reserve_returns_the_units(quota: Quota) -> None:
    t = await quota.tenant("after")
    key = await quota.key(t.id)
    held = (await quota.stub.ReserveQuota(_reserve("r1", api_key=key, images=3))).reservation
    assert await quota.reserved(t.id) == 3
    by_key = (await quota.stub.ReleaseReservation(_by_request("r1", api_key=key))).reservation
    assert (by_key.id, by_key.state, by_key.images) == (held.id, RELEASED, 3)
    assert await quota.reserved(t.id) == 0
    status = (await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=t.id))).quota
    assert status.remaining_images == 50


async def test_releasing_by_request_id_twice_is_idempotent(quota: Quota) -> None:
    t = await quota.tenant("twice")
    await quota.stub.ReserveQuota(_reserve("held", tenant_id=t.id, images=2))
    await quota.stub.ReserveQuota(_reserve("other", tenant_id=t.id, images=4))
    for request_id in ("held", "never-reserved"):
        first = await quota.stub.ReleaseReservation(_by_request(request_id, tenant_id=t.id))
        again = await quota.stub.ReleaseReservation(_by_request(request_id, tenant_id=t.id))
        by_id = await quota.stub.ReleaseReservation(
            quota_pb2.ReleaseReservationRequest(reservation_id=first.reservation.id)
        )
        assert first == again == by_id
        assert first.reservation.state == RELEASED
    # Only the released reservation's units came back, once.
    assert await quota.reserved(t.id) == 4


async def test_a_tenant_cannot_release_another_tenants_reservation(quota: Quota) -> None:
    a = await quota.tenant("owner")
    b = await quota.tenant("intruder")
    b_key = await quota.key(b.id)
    held = (await quota.stub.ReserveQuota(_reserve("r1", tenant_id=a.id, images=2))).reservation
    by_id = (await quota.stub.ReleaseReservation(_by_request("r1", tenant_id=b.id))).reservation
    by_key = (await quota.stub.ReleaseReservation(_by_request("r1", api_key=b_key))).reservation
    # B only ever names its own request ids: it got its own tombstone, A's hold is untouched.
    assert by_id == by_key and by_id.tenant_id == b.id and by_id.id != held.id
    assert await quota.reserved(a.id) == 2
    again = (await quota.stub.ReserveQuota(_reserve("r1", tenant_id=a.id, images=2))).reservation
    assert again == held and again.state == PENDING
    err = await _error(quota.stub.ReleaseReservation(_by_request("r1", tenant_id="t_nobody")))
    assert (err.code, err.metadata["tenant_id"]) == (grpc.StatusCode.NOT_FOUND, "t_nobody")
    err = await _error(
        quota.stub.ReleaseReservation(_by_request("r1", api_key="ig_000000000000_" + "x" * 43))
    )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, reasons.API_KEY_INVALID)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (quota_pb2.ReleaseReservationRequest(), "reservation_id"),
        (_by_request("", tenant_id="t_1"), "by_request.request_id"),
        (_by_request("r1"), "by_request.tenant_id"),
        (
            quota_pb2.ReleaseReservationRequest(
                reservation_id="r_1",
                by_request=quota_pb2.RequestRef(request_id="r1", tenant_id="t"),
            ),
            "reservation_id",
        ),
    ],
    ids=["neither", "empty-request-id", "no-tenant-or-key", "both"],
)
async def test_release_without_exactly_one_target_is_invalid_argument_with_the_field(
    quota: Quota, request_: quota_pb2.ReleaseReservationRequest, field: str
) -> None:
    err = await _error(quota.stub.ReleaseReservation(request_))
    assert (err.code, err.reason, err.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_ARGUMENT,
        "imagegate.quota",
    )
    assert [v.field for v in err.field_violations] == [field]


def _gate_reserve(quota: Quota) -> tuple[threading.Event, threading.Event]:
    """Holds every reserve inside its database thread (where a cancel cannot reach it) until
    `gate` is set; `entered` is set when one is waiting there."""
    assert quota.server is not None
    store = quota.server.store
    entered, gate = threading.Event(), threading.Event()
    real = store.reserve_sync

    def gated(args: ReserveArgs) -> ReserveResult:
        entered.set()
        gate.wait(10)
        return real(args)

    store.reserve_sync = gated  # type: ignore[method-assign]
    return entered, gate


@pytest.mark.parametrize("leave", ["deadline", "cancel"])
async def test_a_hold_written_after_its_caller_left_is_released_at_once(
    quota: Quota, leave: str
) -> None:
    t = await quota.tenant("gone", plan="pro")
    entered, gate = _gate_reserve(quota)
    call = quota.stub.ReserveQuota(
        _reserve("r1", tenant_id=t.id, images=3), timeout=0.2 if leave == "deadline" else 10
    )
    assert await asyncio.to_thread(entered.wait, 10)
    if leave == "cancel":
        call.cancel()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await call
    # Open the gate once the server has seen the caller leave: a write that lands before that
    # is answered normally, and only the caller's release by request id can undo it.
    assert quota.server is not None and quota.server.servicer is not None
    for _ in range(500):
        if quota.server.servicer.releasing:
            break
        await asyncio.sleep(0.01)
    assert quota.server.servicer.releasing == 1
    gate.set()
    for _ in range(100):
        if (await quota.reserved(t.id)) == 0:
            break
        await asyncio.sleep(0.01)
    assert await quota.reserved(t.id) == 0
    # The hold was written and released: a repeat names it, RELEASED, and holds nothing.
    again = (await quota.stub.ReserveQuota(_reserve("r1", tenant_id=t.id, images=3))).reservation
    assert (again.state, again.images) == (RELEASED, 3)
    assert await quota.reserved(t.id) == 0
