"""Smoke: reserve and commit over gRPC."""

from imagegate.quota.v1 import quota_pb2
from services.quota.tests.conftest import QuotaEnv


async def test_reserve_commit(quota: QuotaEnv) -> None:
    t = await quota.tenant()
    k = await quota.key(t.id)
    r = await quota.stub.ReserveQuota(
        quota_pb2.ReserveQuotaRequest(
            request_id="a", api_key=k.api_key, images=2, megapixels=2.0, cost_micros=10
        )
    )
    assert r.tenant.id == t.id and r.key_id == k.key_id
    c = await quota.stub.CommitReservation(
        quota_pb2.CommitReservationRequest(
            reservation_id=r.reservation.id, images=1, megapixels=1.0, cost_micros=5
        )
    )
    assert c.reservation.state == quota_pb2.RESERVATION_STATE_COMMITTED
    q = await quota.stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=t.id))
    assert (
        q.quota.used_images == 1 and q.quota.reserved_images == 0 and q.quota.remaining_images == 49
    )
