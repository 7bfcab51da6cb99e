"""Fixtures: Quota in this process (fake clock) and as its own process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.service_auth import SERVICE_TOKEN_HEADER, with_metadata
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.quota.plans import load_plans
from services.quota.server import QuotaServer, start_quota_server
from services.quota.store import QuotaStore
from tests.persistence.clock import FakeClock
from tests.pg import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]

ADMIN_TOKEN = "test-admin-token"
SERVICE_TOKEN = "igsvc_quota-hold-test-token"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Quota:
    """A client of a running Quota service (and its store when it runs in this process)."""

    stub: quota_pb2_grpc.QuotaServiceStub
    server: QuotaServer | None = None

    async def tenant(self, name: str, plan: str = "free") -> quota_pb2.Tenant:
        """Creates a tenant through the admin RPC."""
        req = quota_pb2.CreateTenantRequest(request_id=f"create-{name}", name=name, plan=plan)
        return (await self.stub.CreateTenant(req, metadata=ADMIN)).tenant

    async def key(self, tenant_id: str) -> str:
        """A new API key of the tenant."""
        req = quota_pb2.CreateApiKeyRequest(tenant_id=tenant_id, label="test")
        return (await self.stub.CreateApiKey(req, metadata=ADMIN)).api_key

    async def reserved(self, tenant_id: str) -> int:
        """Images the tenant's pending reservations hold now."""
        req = quota_pb2.GetQuotaRequest(tenant_id=tenant_id)
        return (await self.stub.GetQuota(req)).quota.reserved_images


@pytest.fixture
async def quota(database_url: str) -> AsyncIterator[Quota]:
    """Quota over gRPC in this process on a fresh database; leases never run out (fake clock)."""
    store = QuotaStore.open(
        database_url, plans=load_plans(), clock=FakeClock(), pepper="pepper", threads=4
    )
    server = await start_quota_server(
        store,
        address="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        telemetry=setup_telemetry("quota-hold-test"),
        sweep_interval=None,
    )
    channel = create_channel(server.address)
    try:
        yield Quota(quota_pb2_grpc.QuotaServiceStub(channel), server)
    finally:
        await channel.close()
        await server.stop(grace=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_serving(channel: grpc.aio.Channel, proc: subprocess.Popen[bytes]) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(300):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise AssertionError("quota process did not start")


@pytest.fixture
async def quota_process(database_url: str, tmp_path: Path) -> AsyncIterator[Quota]:
    """`python -m services.quota` as its own process, as the Router sees it.

    In one process the client and the server share an event loop, so a 1 ms deadline runs out
    before the handler ever starts and the race under test never happens."""
    port = _free_port()
    env = {
        **os.environ,
        "QUOTA_DATABASE_URL": database_url,
        "IMAGEGATE_QUOTA_ADDR": f"127.0.0.1:{port}",
        "IMAGEGATE_QUOTA_METRICS_ADDR": "",
        "IMAGEGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "IMAGEGATE_SERVICE_TOKEN": SERVICE_TOKEN,
        "IMAGEGATE_DATA_DIR": str(tmp_path),
        "IMAGEGATE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [sys.executable, "-m", "services.quota"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        await _wait_serving(channel, proc)
        # Called as the Router calls it: with the service token.
        stub = with_metadata(
            quota_pb2_grpc.QuotaServiceStub(channel), ((SERVICE_TOKEN_HEADER, SERVICE_TOKEN),)
        )
        yield Quota(stub)
    finally:
        await channel.close()
        proc.terminate()
        proc.wait(timeout=20)
