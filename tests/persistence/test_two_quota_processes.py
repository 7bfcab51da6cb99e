"""Two real `python -m services.quota` processes on one PostgreSQL never over-grant."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.service_auth import SERVICE_TOKEN_HEADER, with_metadata
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

ADMIN = (("authorization", "Bearer admin"),)
# The two replicas admit ReserveQuota only from a service, as the Router's channels are.
SERVICE_TOKEN = "igsvc_two-quota-processes-test"
ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
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


async def test_two_processes_on_one_postgres_grant_exactly_the_limit(
    postgres_url: str, tmp_path: Path
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    channels: list[grpc.aio.Channel] = []
    try:
        for _ in range(2):
            port = _port()
            env = {
                **os.environ,
                "QUOTA_DATABASE_URL": postgres_url,
                "IMAGEGATE_QUOTA_ADDR": f"127.0.0.1:{port}",
                # Two replicas on one host: each needs its own metrics port (or none).
                "IMAGEGATE_QUOTA_METRICS_ADDR": "",
                "IMAGEGATE_ADMIN_TOKEN": "admin",
                "IMAGEGATE_SERVICE_TOKEN": SERVICE_TOKEN,
                "IMAGEGATE_DATA_DIR": str(tmp_path),
                "IMAGEGATE_LOG_LEVEL": "WARNING",
            }
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
                    [sys.executable, "-m", "services.quota"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            channels.append(create_channel(f"127.0.0.1:{port}"))
        await asyncio.gather(*(_wait_serving(c, p) for c, p in zip(channels, procs, strict=True)))
        stubs = [
            with_metadata(
                quota_pb2_grpc.QuotaServiceStub(c), ((SERVICE_TOKEN_HEADER, SERVICE_TOKEN),)
            )
            for c in channels
        ]
        tenant = (
            await stubs[0].CreateTenant(
                quota_pb2.CreateTenantRequest(request_id="t", name="acme", plan="free"),
                metadata=ADMIN,
            )
        ).tenant

        async def one(i: int) -> bool:
            try:
                await stubs[i % 2].ReserveQuota(
                    quota_pb2.ReserveQuotaRequest(request_id=f"r{i}", tenant_id=tenant.id, images=1)
                )
                return True
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                return False

        granted = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(granted) == 50
        for stub in stubs:
            status = (await stub.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=tenant.id))).quota
            assert (status.reserved_images, status.remaining_images) == (50, 0)
    finally:
        for c in channels:
            await c.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
