"""API key rotation (new key, overlap, revoke) and the admin key list, which never shows a secret."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.quota.v1 import quota_pb2
from tests.quota.conftest import ADMIN, QuotaEnv

HOUR = 3600


async def _auth(quota: QuotaEnv, api_key: str) -> quota_pb2.AuthenticateApiKeyResponse:
    return await quota.stub.AuthenticateApiKey(quota_pb2.AuthenticateApiKeyRequest(api_key=api_key))


async def _revoke(
    quota: QuotaEnv, key_id: str, grace: int | None
) -> quota_pb2.RevokeApiKeyResponse:
    request = quota_pb2.RevokeApiKeyRequest(key_id=key_id)
    if grace is not None:
        request.grace_period.CopyFrom(Duration(seconds=grace))
    return await quota.stub.RevokeApiKey(request, metadata=ADMIN)


async def test_rotated_key_works_through_its_overlap_then_is_revoked(quota: QuotaEnv):
    tenant = await quota.tenant()
    old = await quota.key(tenant.id)
    new = await quota.key(tenant.id)
    revoked = await _revoke(quota, old.key_id, HOUR)
    assert revoked.revoke_time.ToDatetime().timestamp() == pytest.approx(
        quota.clock().timestamp() + HOUR
    )
    quota.clock.advance(HOUR - 1)
    assert (await _auth(quota, old.api_key)).key_id == old.key_id
    # ReserveQuota authenticates the key itself (the fused statement on PostgreSQL).
    held = await quota.stub.ReserveQuota(
        quota_pb2.ReserveQuotaRequest(request_id="during-overlap", api_key=old.api_key, images=1)
    )
    assert held.reservation.state == quota_pb2.RESERVATION_STATE_PENDING
    quota.clock.advance(2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _auth(quota, old.api_key)
    assert parse_rpc_error(err.value).reason == reasons.API_KEY_REVOKED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await quota.stub.ReserveQuota(
            quota_pb2.ReserveQuotaRequest(request_id="after", api_key=old.api_key, images=1)
        )
    assert parse_rpc_error(err.value).reason == reasons.API_KEY_REVOKED
    assert (await _auth(quota, new.api_key)).key_id == new.key_id


async def test_a_revocation_can_be_brought_forward_but_never_pushed_back(quota: QuotaEnv):
    tenant = await quota.tenant()
    key = await quota.key(tenant.id)
    first = await _revoke(quota, key.key_id, HOUR)
    later = await _revoke(quota, key.key_id, 2 * HOUR)
    assert later.revoke_time == first.revoke_time
    now = await _revoke(quota, key.key_id, None)
    assert now.revoke_time.ToDatetime() < first.revoke_time.ToDatetime()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _auth(quota, key.api_key)
    assert parse_rpc_error(err.value).reason == reasons.API_KEY_REVOKED


async def test_a_grace_period_over_thirty_days_is_invalid(quota: QuotaEnv):
    tenant = await quota.tenant()
    key = await quota.key(tenant.id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _revoke(quota, key.key_id, 31 * 24 * HOUR)
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["grace_period"]


async def test_key_list_shows_prefix_label_creation_last_use_and_revocation_never_the_secret(
    quota: QuotaEnv,
):
    tenant = await quota.tenant()
    other = await quota.tenant("other")
    used = await quota.key(tenant.id)
    unused = await quota.key(tenant.id)
    await quota.key(other.id)
    await _auth(quota, used.api_key)
    await _revoke(quota, unused.key_id, HOUR)
    listed = await quota.stub.ListApiKeys(
        quota_pb2.ListApiKeysRequest(tenant_id=tenant.id), metadata=ADMIN
    )
    by_id = {k.key_id: k for k in listed.keys}
    assert set(by_id) == {used.key_id, unused.key_id}
    assert used.api_key.startswith(used.key_id + "_")
    assert by_id[used.key_id].label == "test" and by_id[used.key_id].tenant_id == tenant.id
    assert by_id[used.key_id].create_time.ToDatetime().timestamp() == pytest.approx(
        quota.clock().timestamp()
    )
    assert by_id[used.key_id].HasField("last_use_time")
    assert not by_id[unused.key_id].HasField("last_use_time")
    assert by_id[unused.key_id].HasField("revoke_time")
    assert not by_id[used.key_id].HasField("revoke_time")
    wire = listed.SerializeToString()
    for secret in (used.api_key, unused.api_key):
        assert secret.split("_", 2)[2].encode() not in wire
    everyone = await quota.stub.ListApiKeys(quota_pb2.ListApiKeysRequest(), metadata=ADMIN)
    assert len(everyone.keys) == 3


async def test_last_use_moves_forward_with_later_use(quota: QuotaEnv):
    tenant = await quota.tenant()
    key = await quota.key(tenant.id)
    await _auth(quota, key.api_key)
    await quota.store.flush_key_use()
    quota.clock.advance(600)
    await _auth(quota, key.api_key)
    listed = await quota.stub.ListApiKeys(quota_pb2.ListApiKeysRequest(), metadata=ADMIN)
    assert listed.keys[0].last_use_time.ToDatetime().timestamp() == pytest.approx(
        quota.clock().timestamp()
    )


async def test_key_list_needs_the_admin_token(quota: QuotaEnv):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await quota.stub.ListApiKeys(quota_pb2.ListApiKeysRequest())
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason == reasons.ADMIN_TOKEN_INVALID
