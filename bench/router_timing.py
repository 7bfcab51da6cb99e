"""Serial latency of GenerateImage via the Router vs the local adapter directly (p50/p99)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import transport_from_env
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from services.metering.catalog import load_catalog as load_prices
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore
from services.router.config import RouterSettings
from services.router.server import start_router


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(n: int) -> None:
    """Runs `n` serial requests each way on one event loop (all services in-process)."""
    tmp = Path(tempfile.mkdtemp(prefix="router-timing-"))
    tel = setup_telemetry("timing")
    qstore = QuotaStore.open(f"sqlite:///{tmp / 'q.db'}", plans=load_plans(), pepper="p")
    quota = await start_quota_server(
        qstore, address="127.0.0.1:0", admin_token="adm", telemetry=tel, sweep_interval=None
    )
    mstore = MeteringStore.open(f"sqlite:///{tmp / 'm.db'}", catalog=load_prices())
    metering = await start_metering_server(mstore, address="127.0.0.1:0", telemetry=tel)
    local, _ = await start_adapter_server(
        LocalAdapter(LocalSettings()), address="127.0.0.1:0", telemetry=tel
    )
    settings = RouterSettings(
        adapters=f"local={local.address}",
        quota_addr=quota.address,
        metering_addr=metering.running.address,
        data_dir=tmp,
    )
    _router, _app, handle = await start_router(settings, tel, address="127.0.0.1:0")
    admin = (("authorization", "Bearer adm"),)
    q = quota_pb2_grpc.QuotaServiceStub(create_channel(quota.address))
    tenant = await q.CreateTenant(
        quota_pb2.CreateTenantRequest(request_id="x", name="bench", plan="enterprise"),
        metadata=admin,
    )
    key = await q.CreateApiKey(
        quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id), metadata=admin
    )
    md = (("authorization", f"Bearer {key.api_key}"),)
    router = router_pb2_grpc.RouterServiceStub(create_channel(handle.running.address))
    direct = provider_pb2_grpc.ProviderServiceStub(create_channel(local.address))
    dreq = provider_pb2.GenerateImageRequest(
        model="imagegate-local-v1", prompt="dot", width=64, height=64, num_images=1
    )
    via, straight, overhead = [], [], []
    for i in range(n + 50):
        t = time.perf_counter()
        await direct.GenerateImage(dreq, timeout=10)
        d = time.perf_counter() - t
        rreq = router_pb2.GenerateImageRequest(
            request_id=f"t{i}", prompt="dot", model="local", width=64, height=64
        )
        t = time.perf_counter()
        call = router.GenerateImage(rreq, metadata=md, timeout=10)
        await call
        r = time.perf_counter() - t
        trailer = dict(await call.trailing_metadata())
        if i >= 50:
            straight.append(d)
            via.append(r)
            overhead.append(float(str(trailer["x-imagegate-overhead-ms"])) / 1000)
    added = [v - s for v, s in zip(via, straight, strict=True)]
    print(f"requests={n} (serial, in-process, tracing without exporter, SQLite ledgers)")
    print(f"direct adapter  p50={_pct(straight, 0.5):.2f} ms  p99={_pct(straight, 0.99):.2f} ms")
    print(f"via router      p50={_pct(via, 0.5):.2f} ms  p99={_pct(via, 0.99):.2f} ms")
    print(
        f"added           p50={_pct(added, 0.5):.2f} ms  p99={_pct(added, 0.99):.2f} ms"
        f"  mean={statistics.mean(added) * 1000:.2f} ms"
    )
    print(
        f"router-reported overhead p50={_pct(overhead, 0.5):.2f} ms p99={_pct(overhead, 0.99):.2f} ms"
    )
    await handle.stop(0.5)
    await local.stop(0.1)
    await quota.stop(0.1)
    await metering.running.stop(0.1)
    await mstore.close()


async def measure(
    router_addr: str,
    local_addr: str,
    api_key: str,
    n: int,
    service: tuple[tuple[str, str], ...] = (),
) -> None:
    """Serial requests each way against already running services (`service`: the metadata the
    Router itself sends an adapter, i.e. the service token)."""
    md = (("authorization", f"Bearer {api_key}"),)
    router = router_pb2_grpc.RouterServiceStub(create_channel(router_addr))
    direct = provider_pb2_grpc.ProviderServiceStub(create_channel(local_addr))
    dreq = provider_pb2.GenerateImageRequest(
        model="imagegate-local-v1", prompt="dot", width=64, height=64, num_images=1
    )
    via, straight, overhead = [], [], []
    stamp = time.time_ns()
    for i in range(n + 50):
        t = time.perf_counter()
        await direct.GenerateImage(dreq, timeout=10, metadata=service)
        d = time.perf_counter() - t
        rreq = router_pb2.GenerateImageRequest(
            request_id=f"t{stamp}-{i}", prompt="dot", model="local", width=64, height=64
        )
        t = time.perf_counter()
        call = router.GenerateImage(rreq, metadata=md, timeout=10)
        await call
        r = time.perf_counter() - t
        trailer = dict(await call.trailing_metadata())
        if i >= 50:
            straight.append(d)
            via.append(r)
            overhead.append(float(str(trailer["x-imagegate-overhead-ms"])) / 1000)
    added = [v - s for v, s in zip(via, straight, strict=True)]
    print(f"requests={n} (serial, separate processes, SQLite ledgers)")
    print(f"direct adapter  p50={_pct(straight, 0.5):.2f} ms  p99={_pct(straight, 0.99):.2f} ms")
    print(f"via router      p50={_pct(via, 0.5):.2f} ms  p99={_pct(via, 0.99):.2f} ms")
    print(f"added           p50={_pct(added, 0.5):.2f} ms  p99={_pct(added, 0.99):.2f} ms")
    print(
        f"router-reported overhead p50={_pct(overhead, 0.5):.2f} ms p99={_pct(overhead, 0.99):.2f} ms"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_env(tmp: Path) -> dict[str, str]:
    import os
    import secrets

    # Free ports and scrape endpoints: other runs on this machine must not clash with this one.
    ports = {name: _free_port() for name in ("router", "quota", "metering", "local")}
    return {
        **os.environ,
        "IMAGEGATE_DATA_DIR": str(tmp),
        "IMAGEGATE_ADMIN_TOKEN": "adm",
        # Quota and Metering admit the Router by this token (docs/security.md); fresh per run.
        "IMAGEGATE_SERVICE_TOKEN": "igsvc_" + secrets.token_urlsafe(24),
        "IMAGEGATE_ROUTER_ADDR": f"127.0.0.1:{ports['router']}",
        "IMAGEGATE_QUOTA_ADDR": f"127.0.0.1:{ports['quota']}",
        "IMAGEGATE_METERING_ADDR": f"127.0.0.1:{ports['metering']}",
        "IMAGEGATE_LOCAL_ADDR": f"127.0.0.1:{ports['local']}",
        "IMAGEGATE_ROUTER_ADAPTERS": f"local=127.0.0.1:{ports['local']}",
        "IMAGEGATE_LOG_LEVEL": "WARNING",
        **{
            f"IMAGEGATE_{key}_METRICS_ADDR": "127.0.0.1:0"
            for key in ("ROUTER", "QUOTA", "METERING", "LOCAL")
        },
    }


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_processes(env: dict[str, str], n: int, pids: dict[str, int]) -> None:
    """Creates a tenant and key on the running Quota, waits for the Router, then measures."""
    admin = (("authorization", "Bearer adm"),)
    q = quota_pb2_grpc.QuotaServiceStub(create_channel(env["IMAGEGATE_QUOTA_ADDR"]))
    tenant = await q.CreateTenant(
        quota_pb2.CreateTenantRequest(request_id="x", name="bench", plan="enterprise"),
        metadata=admin,
        timeout=60,
        wait_for_ready=True,
    )
    key = await q.CreateApiKey(
        quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id), metadata=admin
    )
    r = router_pb2_grpc.RouterServiceStub(create_channel(env["IMAGEGATE_ROUTER_ADDR"]))
    await r.ListStyles(
        router_pb2.ListStylesRequest(),
        metadata=(("authorization", f"Bearer {key.api_key}"),),
        timeout=60,
        wait_for_ready=True,
    )
    await provider_pb2_grpc.ProviderServiceStub(
        create_channel(env["IMAGEGATE_LOCAL_ADDR"])
    ).DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=60, wait_for_ready=True)
    # The Router describes its adapters at start; let that settle before timing.
    await asyncio.sleep(1.0)
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    service = transport_from_env(env).outbound_metadata()
    await measure(
        env["IMAGEGATE_ROUTER_ADDR"], env["IMAGEGATE_LOCAL_ADDR"], key.api_key, n, service
    )
    used = {
        name: (_cpu_seconds(pid) - before[name]) * 1000 / (n + 50) for name, pid in pids.items()
    }
    # The local adapter also served the direct calls, so its figure covers two calls.
    print("CPU ms per request: " + ", ".join(f"{k} {v:.2f}" for k, v in used.items()))


def run_processes(n: int) -> None:
    """Starts quota, metering, local adapter and router as processes, then measures."""
    import subprocess
    import sys

    env = _process_env(Path(tempfile.mkdtemp(prefix="router-timing-")))
    names = ("quota", "metering", "local", "router")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env, stderr=subprocess.DEVNULL
        )
        for name in names
    ]
    try:
        asyncio.run(
            measure_processes(env, n, {nm: p.pid for nm, p in zip(names, procs, strict=True)})
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def main() -> None:
    """`python -m bench.router_timing [-n N] [--in-process]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--in-process", action="store_true", help="all services on one loop")
    args = parser.parse_args()
    if args.in_process:
        asyncio.run(run(args.n))
    else:
        run_processes(args.n)


if __name__ == "__main__":
    main()
