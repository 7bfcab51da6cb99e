"""BatchReserveQuota over real gRPC on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.batch import ItemRpcError
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from services.quota.store import ReserveArgs, ReserveResult
from tests.quota.conftest import QuotaEnv

PENDING = quota_pb2.RESERVATION_STATE_PENDING


def _reserve(
    request_id: str, tenant_id: str = "", images: int = 1, api_key: str = ""
) -> quota_pb2.ReserveQuotaRequest:
    return quota_pb2.ReserveQuotaRequest(
        request_id=request_id, tenant_id=tenant_id, api_key=api_key, images=images
    )


async def _status(q: QuotaEnv, tenant_id: str) -> quota_pb2.QuotaStatus:
    return (await q.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=tenant_id))).quota


async def test_items_are_reserved_as_single_calls_would_be_and_fail_alone(quota: QuotaEnv) -> None:
    t = await quota.tenant(plan="free")
    key = (await quota.key(t.id)).api_key
    await quota.stub.ReserveQuota(_reserve("earlier", t.id, images=45))
    resp = await quota.stub.BatchReserveQuota(
        quota_pb2.BatchReserveQuotaRequest(
            requests=[
                _reserve("a", api_key=key, images=2),
                _reserve("b", t.id, images=10),  # more than the 3 left after "a"
                _reserve("a", api_key=key, images=2),  # repeat inside the batch
                _reserve("", t.id),  # invalid
                _reserve("c", api_key="ig_wrong_key"),
                _reserve("d", t.id, images=3),
            ]
        )
    )
    kinds = [r.WhichOneof("result") for r in resp.results]
    assert kinds == ["response", "error", "response", "error", "error", "response"]
    first, over, repeat, invalid, bad_key, last = resp.results
    assert first.response.created and not repeat.response.created
    assert first.response.reservation.id == repeat.response.reservation.id
    assert first.response.tenant.id == t.id and first.response.key_id
    assert first.response.plan.id == "free"
    assert last.response.reservation.images == 3 and last.response.reservation.state == PENDING
    # The refusal carries what ReserveQuota's would: reason, QuotaFailure and the limit.
    over_err = parse_rpc_error(ItemRpcError.of(over.error))
    assert over_err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over_err.reason == reasons.QUOTA_EXCEEDED
    assert over_err.quota_violations and over_err.metadata["limit"] == "50"
    invalid_err = parse_rpc_error(ItemRpcError.of(invalid.error))
    assert invalid_err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in invalid_err.field_violations] == ["request_id"]
    assert bad_key.error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "ig_wrong_key" not in bad_key.error.message
    s = await _status(quota, t.id)
    assert (s.reserved_images, s.remaining_images) == (50, 0)


async def test_a_batch_never_grants_more_than_the_plan_leaves(quota: QuotaEnv) -> None:
    t = await quota.tenant(plan="free")
    batches = [
        quota_pb2.BatchReserveQuotaRequest(
            requests=[_reserve(f"b{b}-{i}", t.id) for i in range(40)]
        )
        for b in range(5)
    ]
    answers = await asyncio.gather(*(quota.stub.BatchReserveQuota(b) for b in batches))
    results = [r for a in answers for r in a.results]
    granted = [r for r in results if r.WhichOneof("result") == "response"]
    refused = [r for r in results if r.WhichOneof("result") == "error"]
    assert len(granted) == 50 and len(refused) == 150
    assert {r.error.reason for r in refused} == {reasons.QUOTA_EXCEEDED}
    s = await _status(quota, t.id)
    assert (s.reserved_images, s.remaining_images) == (50, 0)


async def test_more_than_256_items_fail_the_whole_call(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota.stub.BatchReserveQuota(
            quota_pb2.BatchReserveQuotaRequest(
                requests=[_reserve(f"r{i}", t.id) for i in range(257)]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await _status(quota, t.id)).reserved_images == 0


async def test_a_caller_that_left_and_released_by_request_id_holds_nothing(
    quota: QuotaEnv,
) -> None:
    """What the Router does when its batch call ends in DEADLINE_EXCEEDED: the holds may still
    be written (or were, and the answer came too late), so it releases each by request_id."""
    t = await quota.tenant(plan="pro")
    held = 0
    for attempt in range(5):
        ids = [f"gone-{attempt}-{i}" for i in range(30)]
        call = quota.stub.BatchReserveQuota(
            quota_pb2.BatchReserveQuotaRequest(
                requests=[_reserve(rid, t.id, images=2) for rid in ids]
            ),
            timeout=0.002,
        )
        try:
            answer = await call
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for rid in ids:
                ref = quota_pb2.RequestRef(request_id=rid, tenant_id=t.id)
                await quota.stub.ReleaseReservation(
                    quota_pb2.ReleaseReservationRequest(by_request=ref)
                )
            continue
        # An answer that did arrive is the caller's to settle, and says what is held (holds
        # the server undid because the deadline had passed come back RELEASED).
        held += sum(
            r.response.reservation.images
            for r in answer.results
            if r.response.reservation.state == PENDING
        )
    servicer = quota.server.servicer
    assert servicer is not None
    for _ in range(200):
        if not servicer.releasing and (await _status(quota, t.id)).reserved_images == held:
            break
        await asyncio.sleep(0.02)
    assert (await _status(quota, t.id)).reserved_images == held


async def test_concurrent_batches_over_the_same_tenants_in_opposite_orders_all_land_once(
    quota: QuotaEnv,
) -> None:
    """Groups lock tenants' rows in the order of their items; two groups in opposite orders may
    deadlock on PostgreSQL, and the loser's items are then run again one by one: every item is
    still answered, and counted exactly once."""
    tenants = [(await quota.tenant(name=f"t{i}", plan="pro")).id for i in range(4)]

    def batch(n: int) -> quota_pb2.BatchReserveQuotaRequest:
        order = tenants if n % 2 else tenants[::-1]
        return quota_pb2.BatchReserveQuotaRequest(
            requests=[_reserve(f"g{n}-{i}", order[i % 4]) for i in range(24)]
        )

    answers = await asyncio.gather(*(quota.stub.BatchReserveQuota(batch(n)) for n in range(16)))
    results = [r for a in answers for r in a.results]
    assert [r.WhichOneof("result") for r in results] == ["response"] * (16 * 24)
    assert all(r.response.created for r in results)
    for tenant in tenants:
        assert (await _status(quota, tenant)).reserved_images == 16 * 24 // 4


async def test_an_item_failing_for_a_transient_reason_is_tried_again_alone(
    quota: QuotaEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = await quota.tenant(plan="pro")
    real = quota.store.reserve_sync
    failed: list[str] = []

    def flaky(args: ReserveArgs) -> ReserveResult:
        if args.request_id == "flaky" and not failed:
            failed.append(args.request_id)
            raise RuntimeError("connection reset")  # not the store's own answer
        return real(args)

    monkeypatch.setattr(quota.store, "reserve_sync", flaky)
    resp = await quota.stub.BatchReserveQuota(
        quota_pb2.BatchReserveQuotaRequest(
            requests=[_reserve("a", t.id), _reserve("flaky", t.id), _reserve("b", t.id)]
        )
    )
    assert failed == ["flaky"]
    assert [r.WhichOneof("result") for r in resp.results] == ["response"] * 3
    assert resp.results[1].response.reservation.request_id == "flaky"
    assert (await _status(quota, t.id)).reserved_images == 3
