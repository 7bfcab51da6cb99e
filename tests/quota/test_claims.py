"""Claims: a caller-chosen reservation id marks a reservation as the caller's own, and a
restarted Router replica releases the pending claims its previous life left behind."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from tests.quota.conftest import QuotaEnv

PREFIX_A, PREFIX_B = "r_aaaaaaaa", "r_bbbbbbbb"


def reserve(tenant_id: str, request_id: str, claim: str) -> quota_pb2.ReserveQuotaRequest:
    return quota_pb2.ReserveQuotaRequest(
        tenant_id=tenant_id, request_id=request_id, images=1, reservation_id=claim
    )


async def reserved(quota: QuotaEnv, tenant_id: str) -> int:
    resp = await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=tenant_id))
    return resp.quota.reserved_images


async def test_the_first_claim_owns_the_request_id_and_a_repeat_sees_whose_it_is(
    quota: QuotaEnv,
) -> None:
    t = await quota.tenant()
    first = await quota.stub.ReserveQuota(reserve(t.id, "req-1", PREFIX_A + "1" * 24))
    again = await quota.stub.ReserveQuota(reserve(t.id, "req-1", PREFIX_B + "2" * 24))
    assert first.created and first.reservation.id == PREFIX_A + "1" * 24
    assert not again.created and again.reservation.id == PREFIX_A + "1" * 24
    assert await reserved(quota, t.id) == 1


async def test_release_claims_frees_only_that_replicas_pending_holds(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    for i, prefix in enumerate((PREFIX_A, PREFIX_A, PREFIX_B)):
        await quota.stub.ReserveQuota(reserve(t.id, f"req-{i}", prefix + f"{i}" * 24))
    committed = await quota.stub.ReserveQuota(reserve(t.id, "done", PREFIX_A + "9" * 24))
    await quota.stub.CommitReservation(
        quota_pb2.CommitReservationRequest(reservation_id=committed.reservation.id, images=1)
    )
    assert await reserved(quota, t.id) == 3
    resp = await quota.stub.ReleaseClaims(quota_pb2.ReleaseClaimsRequest(claim_prefix=PREFIX_A))
    assert resp.released == 2
    assert await reserved(quota, t.id) == 1
    again = await quota.stub.ReleaseClaims(quota_pb2.ReleaseClaimsRequest(claim_prefix=PREFIX_A))
    assert again.released == 0


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("claim_prefix", quota_pb2.ReleaseClaimsRequest(claim_prefix="r_%")),
        (
            "reservation_id",
            quota_pb2.ReserveQuotaRequest(
                tenant_id="t", request_id="x", images=1, reservation_id="../etc"
            ),
        ),
    ],
)
async def test_malformed_claims_are_invalid_arguments(
    quota: QuotaEnv, field: str, message: object
) -> None:
    rpc = (
        quota.stub.ReleaseClaims
        if isinstance(message, quota_pb2.ReleaseClaimsRequest)
        else quota.stub.ReserveQuota
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc(message)
    parsed = parse_rpc_error(info.value)
    assert (
        parsed.code == grpc.StatusCode.INVALID_ARGUMENT
        and parsed.reason == reasons.INVALID_ARGUMENT
    )
    assert [v.field for v in parsed.field_violations] == [field]
