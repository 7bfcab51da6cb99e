"""Fixtures: a Quota store and a real Quota gRPC server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from imagegate.grpckit.channel import create_channel
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.quota.plans import load_plans
from services.quota.server import QuotaServer, start_quota_server
from services.quota.store import QuotaStore
from tests.persistence.clock import FakeClock
from tests.pg import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]

ADMIN_TOKEN = "test-admin-token"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@dataclass
class QuotaEnv:
    """A running Quota service with its store, clock and a client stub."""

    server: QuotaServer
    store: QuotaStore
    clock: FakeClock
    stub: quota_pb2_grpc.QuotaServiceStub
    url: str

    async def tenant(self, name: str = "acme", plan: str = "free") -> quota_pb2.Tenant:
        """Creates a tenant through the admin RPC."""
        resp = await self.stub.CreateTenant(
            quota_pb2.CreateTenantRequest(request_id=f"create-{name}", name=name, plan=plan),
            metadata=ADMIN,
        )
        return resp.tenant

    async def key(self, tenant_id: str) -> quota_pb2.CreateApiKeyResponse:
        """Creates an API key through the admin RPC."""
        return await self.stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant_id, label="test"), metadata=ADMIN
        )


@pytest.fixture
async def quota(database_url: str) -> AsyncIterator[QuotaEnv]:
    """Quota over gRPC on a fresh database (sqlite and postgresql), with a fake clock."""
    clock = FakeClock()
    store = QuotaStore.open(
        database_url, plans=load_plans(), clock=clock, pepper="pepper", threads=16
    )
    server = await start_quota_server(
        store,
        address="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        telemetry=setup_telemetry("quota-test"),
        sweep_interval=None,
    )
    channel = create_channel(server.address)
    try:
        yield QuotaEnv(server, store, clock, quota_pb2_grpc.QuotaServiceStub(channel), database_url)
    finally:
        await channel.close()
        await server.stop(grace=0)
