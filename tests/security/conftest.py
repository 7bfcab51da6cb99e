"""Fixtures: a dev CA with service certificates, and Quota/Metering servers with a Transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagegate.devcerts.issue import issue_all
from imagegate.grpckit.security import Transport
from imagegate.grpckit.tls import TlsFiles
from imagegate.telemetry import setup_telemetry
from services.quota.plans import load_plans
from services.quota.server import QuotaServer, start_quota_server
from services.quota.store import QuotaStore

ADMIN_TOKEN = "security-test-admin-token"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
SERVICE_TOKEN = "igsvc_security-test-token-0123456789"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `make certs` directory: ca.pem and <name>.pem / <name>-key.pem for every identity."""
    out = tmp_path_factory.mktemp("certs")
    issue_all(out)
    return out


def tls_files(certs: Path, name: str) -> TlsFiles:
    """The certificate, key and CA of identity `name`."""
    return TlsFiles(cert=certs / f"{name}.pem", key=certs / f"{name}-key.pem", ca=certs / "ca.pem")


async def quota_server(tmp_path: Path, transport: Transport) -> QuotaServer:
    """A Quota server on loopback, SQLite, guarded by `transport`."""
    store = QuotaStore.open(
        f"sqlite:///{tmp_path / 'quota.db'}", plans=load_plans(), pepper="pepper", threads=4
    )
    return await start_quota_server(
        store,
        address="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        telemetry=setup_telemetry("quota-security-test"),
        sweep_interval=None,
        transport=transport,
    )


@pytest.fixture
async def token_quota(tmp_path: Path) -> AsyncIterator[QuotaServer]:
    """Quota that admits services by the service token (TLS off)."""
    server = await quota_server(tmp_path, Transport(service_token=SERVICE_TOKEN))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def mtls_quota(tmp_path: Path, certs: Path) -> AsyncIterator[QuotaServer]:
    """Quota under mTLS that admits the `router` certificate to its internal RPCs."""
    server = await quota_server(tmp_path, Transport(tls=tls_files(certs, "quota")))
    yield server
    await server.stop(grace=0)
