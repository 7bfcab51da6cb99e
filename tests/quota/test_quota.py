"""Quota over real gRPC on loopback, on SQLite and PostgreSQL, with a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import text

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from tests.quota.conftest import ADMIN, QuotaEnv

PENDING = quota_pb2.RESERVATION_STATE_PENDING
COMMITTED = quota_pb2.RESERVATION_STATE_COMMITTED
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED
EXPIRED = quota_pb2.RESERVATION_STATE_EXPIRED


async def _error(call) -> object:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return parse_rpc_error(info.value)


def _reserve(
    request_id: str, tenant_id: str = "", images: int = 1, **kw
) -> quota_pb2.ReserveQuotaRequest:  # type: ignore[no-untyped-def]
    return quota_pb2.ReserveQuotaRequest(
        request_id=request_id, tenant_id=tenant_id, images=images, **kw
    )


async def _status(q: QuotaEnv, tenant_id: str) -> quota_pb2.QuotaStatus:
    return (await q.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=tenant_id))).quota


async def test_200_concurrent_reservations_grant_exactly_the_remaining_50(quota: QuotaEnv) -> None:
    t = await quota.tenant(plan="free")
    k = await quota.key(t.id)

    async def one(i: int) -> bool:
        try:
            await quota.stub.ReserveQuota(_reserve(f"r{i}", api_key=k.api_key))
            return True
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

    granted = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(granted) == 50
    s = await _status(quota, t.id)
    assert (s.reserved_images, s.used_images, s.remaining_images) == (50, 0, 0)


async def test_over_limit_is_resource_exhausted_with_quota_failure_and_reset(
    quota: QuotaEnv,
) -> None:
    t = await quota.tenant(plan="free")
    await quota.stub.ReserveQuota(_reserve("big", t.id, images=50))
    err = await _error(quota.stub.ReserveQuota(_reserve("one-more", t.id)))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == reasons.QUOTA_EXCEEDED and err.domain == "imagegate.quota"
    assert err.metadata["reset_time"] == "2026-12-01T00:00:00Z"
    assert err.metadata["limit"] == "50" and err.metadata["reserved"] == "50"
    assert err.quota_violations[0].subject == f"tenant:{t.id}"
    assert "2026-12-01T00:00:00Z" in err.quota_violations[0].description


async def test_reserve_is_idempotent_and_detects_reuse(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    a = await quota.stub.ReserveQuota(_reserve("same", t.id, images=2))
    b = await quota.stub.ReserveQuota(_reserve("same", t.id, images=2))
    assert a.reservation == b.reservation
    assert (await _status(quota, t.id)).reserved_images == 2
    err = await _error(quota.stub.ReserveQuota(_reserve("same", t.id, images=3)))
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert err.reason == reasons.IDEMPOTENCY_KEY_REUSED


async def test_concurrent_duplicates_hold_once(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    results = await asyncio.gather(
        *(quota.stub.ReserveQuota(_reserve("dup", t.id, images=3)) for _ in range(8))
    )
    assert len({r.reservation.id for r in results}) == 1
    assert (await _status(quota, t.id)).reserved_images == 3


async def test_partial_commit_returns_the_rest_and_commit_twice_is_idempotent(
    quota: QuotaEnv,
) -> None:
    t = await quota.tenant()
    r = (await quota.stub.ReserveQuota(_reserve("p", t.id, images=4, cost_micros=400))).reservation
    commit = quota_pb2.CommitReservationRequest(reservation_id=r.id, images=1, cost_micros=90)
    first = await quota.stub.CommitReservation(commit)
    second = await quota.stub.CommitReservation(commit)
    assert first.reservation.state == second.reservation.state == COMMITTED
    s = await _status(quota, t.id)
    assert (s.used_images, s.reserved_images, s.remaining_images) == (1, 0, 49)
    assert s.used_cost_micros == 90
    other = quota_pb2.CommitReservationRequest(reservation_id=r.id, images=2)
    err = await _error(quota.stub.CommitReservation(other))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == reasons.RESERVATION_NOT_PENDING


async def test_commit_cannot_exceed_the_reservation(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    r = (await quota.stub.ReserveQuota(_reserve("x", t.id, images=1))).reservation
    err = await _error(
        quota.stub.CommitReservation(
            quota_pb2.CommitReservationRequest(reservation_id=r.id, images=2)
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == reasons.COMMIT_EXCEEDS_RESERVATION
    assert err.field_violations[0].field == "images"


async def test_release_returns_everything_and_is_a_no_op_after_commit(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    a = (await quota.stub.ReserveQuota(_reserve("a", t.id, images=5))).reservation
    b = (await quota.stub.ReserveQuota(_reserve("b", t.id, images=5))).reservation
    released = await quota.stub.ReleaseReservation(
        quota_pb2.ReleaseReservationRequest(reservation_id=a.id)
    )
    assert released.reservation.state == RELEASED
    await quota.stub.CommitReservation(
        quota_pb2.CommitReservationRequest(reservation_id=b.id, images=5)
    )
    after = await quota.stub.ReleaseReservation(
        quota_pb2.ReleaseReservationRequest(reservation_id=b.id)
    )
    assert after.reservation.state == COMMITTED
    s = await _status(quota, t.id)
    assert (s.used_images, s.reserved_images) == (5, 0)
    err = await _error(
        quota.stub.CommitReservation(
            quota_pb2.CommitReservationRequest(reservation_id=a.id, images=1)
        )
    )
    assert err.reason == reasons.RESERVATION_NOT_PENDING


async def test_expired_lease_returns_units_via_sweeper_and_lazily(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    lease = duration_pb2.Duration(seconds=60)
    a = (await quota.stub.ReserveQuota(_reserve("a", t.id, images=30, lease=lease))).reservation
    assert a.state == PENDING
    quota.clock.advance(59)
    assert await quota.store.expire_leases() == 0
    quota.clock.advance(2)
    assert await quota.store.expire_leases() == 1
    assert (await _status(quota, t.id)).reserved_images == 0
    # Lazy: a lease that ran out is returned on read and on reserve, before any sweep.
    await quota.stub.ReserveQuota(_reserve("b", t.id, images=50, lease=lease))
    quota.clock.advance(61)
    assert (await _status(quota, t.id)).remaining_images == 50
    await quota.stub.ReserveQuota(_reserve("c", t.id, images=40, lease=lease))
    quota.clock.advance(61)
    c2 = await quota.stub.ReserveQuota(_reserve("d", t.id, images=50))
    assert c2.reservation.state == PENDING
    # A late commit of an expired reservation still charges: the image was delivered.
    late = await quota.stub.CommitReservation(
        quota_pb2.CommitReservationRequest(reservation_id=a.id, images=1)
    )
    assert late.reservation.state == COMMITTED
    assert (await _status(quota, t.id)).used_images == 1


async def test_month_boundary_counts_in_the_month_reserved(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    quota.clock.set(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    r = (await quota.stub.ReserveQuota(_reserve("late", t.id, images=3))).reservation
    assert r.period == "2026-11"
    quota.clock.set(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    await quota.stub.CommitReservation(
        quota_pb2.CommitReservationRequest(reservation_id=r.id, images=3)
    )
    december = await _status(quota, t.id)
    assert december.period == "2026-12"
    assert (december.used_images, december.reserved_images, december.remaining_images) == (
        0,
        0,
        50,
    )
    assert december.reset_time.ToDatetime().replace(tzinfo=UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    with quota.store.engine.connect() as conn:
        used = conn.execute(
            text(
                "SELECT used_images FROM quota_periods WHERE tenant_id = :t AND period = '2026-11'"
            ),
            {"t": t.id},
        ).scalar_one()
    assert used == 3


async def test_revoked_key_stops_at_once_and_unknown_keys_fail(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    k = await quota.key(t.id)
    ok = await quota.stub.AuthenticateApiKey(quota_pb2.AuthenticateApiKeyRequest(api_key=k.api_key))
    assert ok.tenant.id == t.id and ok.key_id == k.key_id and ok.plan.id == "free"
    await quota.stub.RevokeApiKey(quota_pb2.RevokeApiKeyRequest(key_id=k.key_id), metadata=ADMIN)
    err = await _error(quota.stub.ReserveQuota(_reserve("x", api_key=k.api_key)))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, reasons.API_KEY_REVOKED)
    err = await _error(
        quota.stub.AuthenticateApiKey(quota_pb2.AuthenticateApiKeyRequest(api_key=k.api_key))
    )
    assert err.reason == reasons.API_KEY_REVOKED
    forged = k.api_key[:-4] + ("AAAA" if not k.api_key.endswith("AAAA") else "BBBB")
    for bad in (forged, "ig_000000000000_" + "x" * 43, "nonsense"):
        err = await _error(quota.stub.ReserveQuota(_reserve("y", api_key=bad)))
        assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, reasons.API_KEY_INVALID)
        assert bad not in err.message


async def test_keys_are_not_stored_in_clear(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    keys = [await quota.key(t.id) for _ in range(3)]
    secrets = [k.api_key.split("_", 2)[2] for k in keys]
    with quota.store.engine.connect() as conn:
        dump = repr(conn.execute(text("SELECT * FROM api_keys")).all())
    assert all(k.key_id in dump for k in keys)
    for k, secret in zip(keys, secrets, strict=True):
        assert k.api_key not in dump and secret not in dump


async def test_admin_rpcs_refuse_without_the_token(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    calls = [
        lambda md: quota.stub.CreateTenant(quota_pb2.CreateTenantRequest(name="x"), metadata=md),
        lambda md: quota.stub.SetTenantPlan(
            quota_pb2.SetTenantPlanRequest(tenant_id=t.id, plan="pro"), metadata=md
        ),
        lambda md: quota.stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=t.id), metadata=md
        ),
        lambda md: quota.stub.RevokeApiKey(
            quota_pb2.RevokeApiKeyRequest(key_id="ig_000000000000"), metadata=md
        ),
        lambda md: quota.stub.ListTenants(quota_pb2.ListTenantsRequest(), metadata=md),
    ]
    for call in calls:
        for md in ((), (("authorization", "Bearer wrong"),)):
            err = await _error(call(md))
            assert (err.code, err.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.ADMIN_TOKEN_INVALID,
            )
    tenants = await quota.stub.ListTenants(quota_pb2.ListTenantsRequest(), metadata=ADMIN)
    assert [x.name for x in tenants.tenants] == ["acme"]


async def test_set_plan_takes_effect_at_once_and_create_tenant_is_idempotent(
    quota: QuotaEnv,
) -> None:
    t = await quota.tenant()
    again = await quota.tenant()
    assert again.id == t.id
    err = await _error(
        quota.stub.CreateTenant(
            quota_pb2.CreateTenantRequest(request_id="create-acme", name="other"), metadata=ADMIN
        )
    )
    assert err.reason == reasons.IDEMPOTENCY_KEY_REUSED
    err = await _error(
        quota.stub.CreateTenant(quota_pb2.CreateTenantRequest(name="acme"), metadata=ADMIN)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, reasons.ALREADY_EXISTS)
    await quota.stub.ReserveQuota(_reserve("a", t.id, images=50))
    await quota.stub.SetTenantPlan(
        quota_pb2.SetTenantPlanRequest(tenant_id=t.id, plan="pro"), metadata=ADMIN
    )
    r = await quota.stub.ReserveQuota(_reserve("b", t.id, images=10))
    assert r.plan.id == "pro"
    assert (await _status(quota, t.id)).remaining_images == 440
    plans = await quota.stub.ListPlans(quota_pb2.ListPlansRequest())
    by_id = {p.id: p for p in plans.plans}
    assert by_id["free"].monthly_images == 50 and list(by_id["free"].allowed_tiers) == ["budget"]
    assert by_id["pro"].price_micros == 29_000_000 and by_id["enterprise"].monthly_images == 0


async def test_enterprise_is_unlimited(quota: QuotaEnv) -> None:
    t = await quota.tenant(plan="enterprise")
    await quota.stub.ReserveQuota(_reserve("a", t.id, images=100_000))
    s = await _status(quota, t.id)
    assert (s.reserved_images, s.remaining_images) == (100_000, -1)


BAD_INPUTS = [
    ("AuthenticateApiKey", quota_pb2.AuthenticateApiKeyRequest(), {"api_key"}, ()),
    (
        "ReserveQuota",
        quota_pb2.ReserveQuotaRequest(
            images=0, megapixels=-1, cost_micros=-1, lease=duration_pb2.Duration(seconds=-5)
        ),
        {"request_id", "tenant_id", "images", "megapixels", "cost_micros", "lease"},
        (),
    ),
    (
        "CommitReservation",
        quota_pb2.CommitReservationRequest(images=-1, megapixels=float("nan"), cost_micros=-1),
        {"reservation_id", "images", "megapixels", "cost_micros"},
        (),
    ),
    ("ReleaseReservation", quota_pb2.ReleaseReservationRequest(), {"reservation_id"}, ()),
    ("GetQuota", quota_pb2.GetQuotaRequest(), {"tenant_id"}, ()),
    (
        "CreateTenant",
        quota_pb2.CreateTenantRequest(request_id="x" * 300, name=" ", plan="gold"),
        {"request_id", "name", "plan"},
        ADMIN,
    ),
    ("SetTenantPlan", quota_pb2.SetTenantPlanRequest(plan="gold"), {"tenant_id", "plan"}, ADMIN),
    (
        "CreateApiKey",
        quota_pb2.CreateApiKeyRequest(label="l" * 101),
        {"tenant_id", "label"},
        ADMIN,
    ),
    ("RevokeApiKey", quota_pb2.RevokeApiKeyRequest(), {"key_id"}, ADMIN),
]


@pytest.mark.parametrize(("rpc", "request_", "fields", "metadata"), BAD_INPUTS)
async def test_bad_input_is_invalid_argument_with_field_violations(
    quota: QuotaEnv, rpc: str, request_: object, fields: set[str], metadata: tuple
) -> None:
    err = await _error(getattr(quota.stub, rpc)(request_, metadata=metadata))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == reasons.INVALID_ARGUMENT
    assert {v.field for v in err.field_violations} == fields


async def test_unknown_tenant_and_reservation_are_not_found(quota: QuotaEnv) -> None:
    err = await _error(quota.stub.ReserveQuota(_reserve("a", "t_nope")))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, reasons.NOT_FOUND)
    err = await _error(
        quota.stub.CommitReservation(
            quota_pb2.CommitReservationRequest(reservation_id="r_nope", images=1)
        )
    )
    assert err.code == grpc.StatusCode.NOT_FOUND and err.metadata["reservation_id"] == "r_nope"
