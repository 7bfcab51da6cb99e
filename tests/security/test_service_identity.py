"""Quota's and Metering's internal RPCs admit services only: never a tenant key or an anonymous caller."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.grpckit.security import Transport
from imagegate.grpckit.service_auth import SERVICE_TOKEN_HEADER
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.metering.catalog import load_catalog
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.server import QuotaServer
from tests.security.conftest import ADMIN, SERVICE_TOKEN

SERVICE = ((SERVICE_TOKEN_HEADER, SERVICE_TOKEN),)


async def _tenant_key(stub: quota_pb2_grpc.QuotaServiceStub) -> tuple[str, str]:
    tenant = (
        await stub.CreateTenant(
            quota_pb2.CreateTenantRequest(request_id="t", name="acme", plan="pro"), metadata=ADMIN
        )
    ).tenant
    key = await stub.CreateApiKey(
        quota_pb2.CreateApiKeyRequest(tenant_id=tenant.id, label="k"), metadata=ADMIN
    )
    return tenant.id, key.api_key


def _reserve(tenant_id: str, request_id: str = "req-1") -> quota_pb2.ReserveQuotaRequest:
    return quota_pb2.ReserveQuotaRequest(request_id=request_id, tenant_id=tenant_id, images=1)


async def test_quota_refuses_reserve_quota_sent_with_a_tenant_key(token_quota: QuotaServer):
    async with create_channel(token_quota.address) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant_id, api_key = await _tenant_key(stub)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReserveQuota(
                _reserve(tenant_id), metadata=(("authorization", f"Bearer {api_key}"),)
            )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason == reasons.SERVICE_IDENTITY_REQUIRED
    assert parsed.domain == "imagegate.quota"
    # Nothing was held for the tenant.
    quota = await token_quota.store.get_quota(tenant_id)
    assert quota.reserved_images == 0


@pytest.mark.parametrize(
    "rpc,request_",
    [
        ("ReserveQuota", _reserve("t_any")),
        ("CommitReservation", quota_pb2.CommitReservationRequest(reservation_id="r", images=1)),
        ("ReleaseReservation", quota_pb2.ReleaseReservationRequest(reservation_id="r")),
        ("ReleaseClaims", quota_pb2.ReleaseClaimsRequest(claim_prefix="r_0123abcd")),
        ("AuthenticateApiKey", quota_pb2.AuthenticateApiKeyRequest(api_key="ig_x")),
        ("GetQuota", quota_pb2.GetQuotaRequest(tenant_id="t_any")),
        ("BatchCommitReservations", quota_pb2.BatchCommitReservationsRequest()),
    ],
)
async def test_quota_refuses_every_internal_rpc_from_an_anonymous_caller(
    token_quota: QuotaServer, rpc: str, request_: object
):
    async with create_channel(token_quota.address) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, rpc)(request_)
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason == reasons.SERVICE_IDENTITY_REQUIRED


async def test_quota_refuses_a_wrong_service_token(token_quota: QuotaServer):
    async with create_channel(token_quota.address) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReserveQuota(
                _reserve("t_any"), metadata=((SERVICE_TOKEN_HEADER, SERVICE_TOKEN + "x"),)
            )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason == reasons.SERVICE_TOKEN_INVALID


async def test_quota_reserves_for_a_caller_with_the_service_token(token_quota: QuotaServer):
    async with create_channel(token_quota.address) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant_id, _ = await _tenant_key(stub)
        resp = await stub.ReserveQuota(_reserve(tenant_id), metadata=SERVICE)
        assert resp.reservation.state == quota_pb2.RESERVATION_STATE_PENDING
        # The service token is no admin token: admin RPCs still want theirs.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTenants(quota_pb2.ListTenantsRequest(), metadata=SERVICE)
    assert parse_rpc_error(err.value).reason == reasons.ADMIN_TOKEN_INVALID


async def test_quota_admits_no_service_when_neither_token_nor_certificate_is_configured(
    tmp_path: Path,
):
    from tests.security.conftest import quota_server

    server = await quota_server(tmp_path, Transport())
    try:
        async with create_channel(server.address) as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                # An empty configured token must never match an empty presented one.
                await stub.ReserveQuota(_reserve("t_any"), metadata=((SERVICE_TOKEN_HEADER, ""),))
        assert parse_rpc_error(err.value).reason == reasons.SERVICE_TOKEN_INVALID
    finally:
        await server.stop(grace=0)


async def test_metering_refuses_record_usage_from_a_tenant_key_and_admits_the_service(
    tmp_path: Path,
):
    store = MeteringStore.open(
        f"sqlite:///{tmp_path / 'metering.db'}", catalog=load_catalog(), threads=2
    )
    server = await start_metering_server(
        store,
        address="127.0.0.1:0",
        telemetry=setup_telemetry("metering-security-test"),
        transport=Transport(service_token=SERVICE_TOKEN),
    )
    try:
        async with create_channel(server.address) as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RecordUsage(
                    metering_pb2.RecordUsageRequest(), metadata=(("authorization", "Bearer ig_k"),)
                )
            parsed = parse_rpc_error(err.value)
            assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
            assert parsed.reason == reasons.SERVICE_IDENTITY_REQUIRED
            assert parsed.domain == "imagegate.metering"
            # With the token the call reaches validation (this empty record is invalid).
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RecordUsage(metering_pb2.RecordUsageRequest(), metadata=SERVICE)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # The price catalog stays public.
            await stub.ListPrices(metering_pb2.ListPricesRequest())
    finally:
        await server.stop(grace=0)


async def test_enhancer_refuses_a_rewrite_to_an_anonymous_caller_and_admits_the_service():
    from tests.enhancer.stack import start_enhancer_stack
    from tests.enhancer.test_enhancer_contract import request

    stack = await start_enhancer_stack(transport=Transport(service_token=SERVICE_TOKEN))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.stub.EnhancePrompt(request())
        parsed = parse_rpc_error(err.value)
        assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
        assert parsed.reason == reasons.SERVICE_IDENTITY_REQUIRED
        # No text provider was asked (its credit is spent only for services).
        assert all(not e.calls for e in stack.emulators.values())
        resp = await stack.stub.EnhancePrompt(request(), metadata=SERVICE)
        assert resp.prompt and len(stack.emulators["groq"].calls) == 1
    finally:
        await stack.stop()
