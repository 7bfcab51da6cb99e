"""Quota under mTLS: the router certificate is admitted, others refused; certificates reload."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from imagegate.devcerts.issue import issue, load_or_create_ca
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import start_server
from imagegate.grpckit.tls import TlsFiles, channel_credentials
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from services.quota.server import QuotaServer
from tests.security.conftest import ADMIN, tls_files


def _reserve(tenant_id: str) -> quota_pb2.ReserveQuotaRequest:
    return quota_pb2.ReserveQuotaRequest(request_id="req-1", tenant_id=tenant_id, images=1)


async def test_router_certificate_reserves_quota_over_mtls(mtls_quota: QuotaServer, certs: Path):
    admin_creds = channel_credentials(tls_files(certs, "admin"))
    async with create_channel(mtls_quota.address, credentials=admin_creds) as channel:
        tenant = (
            await quota_pb2_grpc.QuotaServiceStub(channel).CreateTenant(
                quota_pb2.CreateTenantRequest(request_id="t", name="acme", plan="pro"),
                metadata=ADMIN,
            )
        ).tenant
    router_creds = channel_credentials(tls_files(certs, "router"))
    async with create_channel(mtls_quota.address, credentials=router_creds) as channel:
        resp = await quota_pb2_grpc.QuotaServiceStub(channel).ReserveQuota(_reserve(tenant.id))
    assert resp.reservation.state == quota_pb2.RESERVATION_STATE_PENDING


async def test_another_certificate_of_our_ca_with_a_tenant_key_is_denied_reserve_quota(
    mtls_quota: QuotaServer, certs: Path
):
    creds = channel_credentials(tls_files(certs, "admin"))
    async with create_channel(mtls_quota.address, credentials=creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await quota_pb2_grpc.QuotaServiceStub(channel).ReserveQuota(
                _reserve("t_any"), metadata=(("authorization", "Bearer ig_tenant_key"),)
            )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
    assert parsed.reason == reasons.SERVICE_NOT_ALLOWED
    assert parsed.metadata["identity"] == "admin"


async def test_a_client_without_a_certificate_cannot_connect_to_an_mtls_service(
    mtls_quota: QuotaServer, certs: Path
):
    only_ca = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    async with create_channel(mtls_quota.address, credentials=only_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await quota_pb2_grpc.QuotaServiceStub(channel).ListPlans(
                quota_pb2.ListPlansRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_cannot_talk_to_a_tls_service(mtls_quota: QuotaServer):
    async with create_channel(mtls_quota.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await quota_pb2_grpc.QuotaServiceStub(channel).ListPlans(
                quota_pb2.ListPlansRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_picks_up_a_replaced_certificate_without_a_restart(tmp_path: Path):
    old_dir, new_dir, live = tmp_path / "old", tmp_path / "new", tmp_path / "live"
    old_ca, new_ca = load_or_create_ca(old_dir), load_or_create_ca(new_dir)
    issue(old_dir, "quota", ca=old_ca)
    issue(new_dir, "quota", ca=new_ca)
    live.mkdir()
    for name in ("quota.pem", "quota-key.pem"):
        shutil.copy(old_dir / name, live / name)
    files = TlsFiles(cert=live / "quota.pem", key=live / "quota-key.pem")
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[],
        service_names=[],
        domain="imagegate.test",
        transport=Transport(tls=files),
    )

    async def healthy_trusting(ca_dir: Path) -> bool:
        creds = grpc.ssl_channel_credentials(root_certificates=(ca_dir / "ca.pem").read_bytes())
        async with create_channel(running.address, credentials=creds) as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            try:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                return True
            except grpc.aio.AioRpcError:
                return False

    try:
        assert await healthy_trusting(old_dir)
        assert not await healthy_trusting(new_dir)
        # A renewal writes the new pair in place (cert-manager, a Secret update, `make certs`).
        for name in ("quota.pem", "quota-key.pem"):
            shutil.copy(new_dir / name, live / name)
        assert await healthy_trusting(new_dir)
        assert not await healthy_trusting(old_dir)
    finally:
        await running.stop(grace=0)


async def test_a_tls_server_can_answer_plaintext_health_probes_on_a_separate_port(certs: Path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from imagegate.devstack.services import free_port

    health_port = free_port()
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[],
        service_names=[],
        domain="imagegate.test",
        transport=Transport(tls=tls_files(certs, "quota"), health_port=health_port),
    )
    try:
        async with create_channel(f"127.0.0.1:{health_port}") as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            # Nothing but health is served there.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await quota_pb2_grpc.QuotaServiceStub(channel).ListPlans(
                    quota_pb2.ListPlansRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.stop(grace=0)
