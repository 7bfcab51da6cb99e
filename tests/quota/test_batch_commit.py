"""BatchCommitReservations over real gRPC on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from tests.quota.conftest import QuotaEnv

COMMITTED = quota_pb2.RESERVATION_STATE_COMMITTED


async def _reserve(q: QuotaEnv, tenant_id: str, request_id: str, images: int = 1) -> str:
    resp = await q.stub.ReserveQuota(
        quota_pb2.ReserveQuotaRequest(request_id=request_id, tenant_id=tenant_id, images=images)
    )
    return resp.reservation.id


def _commit(reservation_id: str, images: int = 1) -> quota_pb2.CommitReservationRequest:
    return quota_pb2.CommitReservationRequest(reservation_id=reservation_id, images=images)


async def test_mixed_items_fail_alone_in_request_order_and_replays_are_idempotent(
    quota: QuotaEnv,
) -> None:
    t = await quota.tenant(plan="free")
    a = await _reserve(quota, t.id, "a", images=2)
    b = await _reserve(quota, t.id, "b")
    c = await _reserve(quota, t.id, "c")
    resp = await quota.stub.BatchCommitReservations(
        quota_pb2.BatchCommitReservationsRequest(
            requests=[
                _commit(a, images=1),
                _commit("r_missing"),
                _commit(b, images=5),  # more than reserved
                _commit(a, images=1),  # replay inside the batch: same answer
                _commit(""),  # invalid
                _commit(c, images=1),
                _commit(a, images=2),  # different content for a committed reservation
            ]
        )
    )
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == [
        "reservation",
        "error",
        "error",
        "reservation",
        "error",
        "reservation",
        "error",
    ]
    first, missing, over, replay, invalid, third, changed = resp.results
    assert first.reservation.id == replay.reservation.id == a
    assert first.reservation.state == replay.reservation.state == COMMITTED
    assert third.reservation.id == c and third.reservation.state == COMMITTED
    code = grpc.StatusCode
    assert (missing.error.code, missing.error.reason) == (
        code.NOT_FOUND.value[0],
        reasons.NOT_FOUND,
    )
    assert (over.error.code, over.error.reason) == (
        code.INVALID_ARGUMENT.value[0],
        reasons.COMMIT_EXCEEDS_RESERVATION,
    )
    assert (invalid.error.code, invalid.error.reason) == (
        code.INVALID_ARGUMENT.value[0],
        reasons.INVALID_ARGUMENT,
    )
    assert "reservation_id" in invalid.error.message
    assert (changed.error.code, changed.error.reason) == (
        code.FAILED_PRECONDITION.value[0],
        reasons.RESERVATION_NOT_PENDING,
    )
    status = (await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=t.id))).quota
    # a charged once (1 of 2), c charged, b still held (its commit was refused).
    assert (status.used_images, status.reserved_images) == (2, 1)

    # Replayed in a later batch (and by the single RPC): same reservations, nothing charged twice.
    again = await quota.stub.BatchCommitReservations(
        quota_pb2.BatchCommitReservationsRequest(requests=[_commit(c), _commit(a)])
    )
    assert [r.reservation.id for r in again.results] == [c, a]
    assert all(r.reservation.state == COMMITTED for r in again.results)
    single = await quota.stub.CommitReservation(_commit(a))
    assert single.reservation == again.results[1].reservation
    status = (await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=t.id))).quota
    assert (status.used_images, status.reserved_images) == (2, 1)


async def test_many_items_commit_in_order(quota: QuotaEnv) -> None:
    t = await quota.tenant(plan="pro")
    ids = [await _reserve(quota, t.id, f"r{i}") for i in range(40)]
    resp = await quota.stub.BatchCommitReservations(
        quota_pb2.BatchCommitReservationsRequest(requests=[_commit(i) for i in ids])
    )
    assert [r.reservation.id for r in resp.results] == ids
    status = (await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=t.id))).quota
    assert (status.used_images, status.reserved_images) == (40, 0)


@pytest.mark.parametrize("count", [0, 257])
async def test_empty_or_oversized_batch_is_refused(quota: QuotaEnv, count: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await quota.stub.BatchCommitReservations(
            quota_pb2.BatchCommitReservationsRequest(
                requests=[_commit(f"r{i}") for i in range(count)]
            )
        )
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason, err.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_ARGUMENT,
        "imagegate.quota",
    )
    assert [v.field for v in err.field_violations] == ["requests"]
