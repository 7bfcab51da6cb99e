"""First-start setup: the admin token and a `dev` tenant whose API key is written to a file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import grpc

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import Transport
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

ADMIN_TOKEN_FILE = "admin-token"
DEV_KEY_FILE = "dev-api-key"
DEV_TENANT = "dev"
DEV_PLAN = "pro"


def write_secret(path: Path, value: str) -> None:
    """Writes a secret readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def ensure_admin_token(data_dir: Path, env: dict[str, str]) -> str:
    """IMAGEGATE_ADMIN_TOKEN, or the token in <data_dir>/admin-token (created on first start)."""
    if env.get("IMAGEGATE_ADMIN_TOKEN"):
        return env["IMAGEGATE_ADMIN_TOKEN"]
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
    else:
        token = "igadm_" + secrets.token_urlsafe(32)
        write_secret(path, token)
    env["IMAGEGATE_ADMIN_TOKEN"] = token
    return token


async def ensure_dev_key(
    data_dir: Path, quota_addr: str, admin_token: str, *, transport: Transport | None = None
) -> tuple[Path, bool]:
    """Makes sure <data_dir>/dev-api-key holds a working key of the `dev` tenant.

    `transport`: the stack's (its certificate and service token check the key on Quota).
    Returns the file and whether a new key was created.
    """
    transport = transport or Transport()
    path = data_dir / DEV_KEY_FILE
    admin = (("authorization", f"Bearer {admin_token}"),)
    service = transport.outbound_metadata()
    async with create_channel(quota_addr, credentials=transport.channel_credentials()) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        if path.exists():
            try:
                await stub.AuthenticateApiKey(
                    quota_pb2.AuthenticateApiKeyRequest(api_key=path.read_text().strip()),
                    metadata=service,
                    timeout=5,
                )
                return path, False
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
        tenant = await stub.CreateTenant(
            quota_pb2.CreateTenantRequest(
                request_id="devstack-dev-tenant", name=DEV_TENANT, plan=DEV_PLAN
            ),
            metadata=admin,
            timeout=5,
        )
        key = await stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="devstack"),
            metadata=admin,
            timeout=5,
        )
        write_secret(path, key.api_key)
        return path, True
