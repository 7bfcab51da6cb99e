"""Reserve+commit per second on SQLite and PostgreSQL, on QuotaStore and over gRPC.

    python -m bench.quota_store                  # both engines, store and gRPC, 1 and 16
    python -m bench.quota_store --engines sqlite --modes store --concurrency 32
    python -m bench.quota_store URL              # one database URL, store level only

Each worker is one tenant on the enterprise plan and reserves with its API key (authenticate +
reserve in one transaction, as the Router does), then commits. gRPC runs a real Quota server in a
child process on loopback, so client and server do not share a GIL. PostgreSQL is a throwaway
cluster from tests/fixtures/postgres.py with fsync and synchronous_commit on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from services.quota.plans import load_plans
from services.quota.store import QuotaStore, ReserveArgs


async def _tenants(store: QuotaStore, n: int) -> list[tuple[str, str]]:
    """(tenant_id, api_key) of n enterprise tenants."""
    out = []
    stamp = time.time_ns()
    for i in range(n):
        tenant = await store.create_tenant(
            request_id=f"b{stamp}-{i}", name=f"bench{stamp}-{i}", plan="enterprise"
        )
        api_key, _ = await store.create_api_key(tenant.id, "bench")
        out.append((tenant.id, api_key))
    return out


def _summary(
    done: int, elapsed: float, lat_r: list[float], lat_c: list[float], cpu: float
) -> dict[str, float]:
    return {
        "pairs_per_s": done / elapsed,
        "server_cpu_us_per_pair": cpu / done * 1e6 if done else 0.0,
        "reserve_p50_ms": statistics.median(lat_r) * 1e3 if lat_r else 0.0,
        "commit_p50_ms": statistics.median(lat_c) * 1e3 if lat_c else 0.0,
    }


async def measure(
    url: str, *, seconds: float = 3.0, concurrency: int = 32, threads: int = 8
) -> float:
    """Reserve+commit pairs per second across `concurrency` tenants on an enterprise plan."""
    return (await measure_store(url, seconds=seconds, concurrency=concurrency, threads=threads))[
        "pairs_per_s"
    ]


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process or of `pid`, in seconds."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_store(
    url: str, *, seconds: float, concurrency: int, threads: int = 8
) -> dict[str, float]:
    """Store-level reserve (with api_key) + commit, `concurrency` workers."""
    store = QuotaStore.open(url, plans=load_plans(), threads=threads)
    tenants = await _tenants(store, concurrency)
    done = 0
    lat_r: list[float] = []
    lat_c: list[float] = []

    async def worker(tenant_id: str, api_key: str) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < end:
            n += 1
            t0 = time.perf_counter()
            res = await store.reserve(
                ReserveArgs(request_id=f"{tenant_id}-{n}", api_key=api_key, images=1)
            )
            t1 = time.perf_counter()
            await store.commit(res.reservation.id, images=1)
            lat_r.append(t1 - t0)
            lat_c.append(time.perf_counter() - t1)
            done += 1

    cpu0 = cpu_seconds()
    start = time.perf_counter()
    end = start + seconds
    await asyncio.gather(*(worker(t, k) for t, k in tenants))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0  # the whole process: store, event loop and this load generator
    await store.close()
    return _summary(done, elapsed, lat_r, lat_c, cpu)


async def _serve(url: str, n: int, threads: int) -> None:
    """Child process: a Quota server on loopback; prints {"port", "keys"}; stops on stdin EOF."""
    from imagegate.telemetry import setup_telemetry
    from services.quota.server import start_quota_server

    store = QuotaStore.open(url, plans=load_plans(), threads=threads)
    tenants = await _tenants(store, n)
    server = await start_quota_server(
        store,
        address="127.0.0.1:0",
        admin_token="bench",
        telemetry=setup_telemetry("quota-bench"),
        sweep_interval=None,
    )
    print(json.dumps({"address": server.address, "keys": [k for _, k in tenants]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def measure_grpc(
    url: str, *, seconds: float, concurrency: int, threads: int = 8
) -> dict[str, float]:
    """ReserveQuota (api_key) + CommitReservation over gRPC against a server in a child process."""
    from imagegate.grpckit.channel import create_channel
    from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.quota_store",
        "--serve",
        url,
        "--concurrency",
        str(concurrency),
        "--threads",
        str(threads),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        info = json.loads(await child.stdout.readline())
        channel = create_channel(info["address"])
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        done = 0
        lat_r: list[float] = []
        lat_c: list[float] = []
        stamp = time.time_ns()

        async def worker(i: int, api_key: str) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < end:
                n += 1
                t0 = time.perf_counter()
                res = await stub.ReserveQuota(
                    quota_pb2.ReserveQuotaRequest(
                        request_id=f"g{stamp}-{i}-{n}", api_key=api_key, images=1
                    ),
                    timeout=10,
                )
                t1 = time.perf_counter()
                await stub.CommitReservation(
                    quota_pb2.CommitReservationRequest(reservation_id=res.reservation.id, images=1),
                    timeout=10,
                )
                lat_r.append(t1 - t0)
                lat_c.append(time.perf_counter() - t1)
                done += 1

        # Warm the channel.
        end = time.perf_counter() + 0.3
        await asyncio.gather(*(worker(i, k) for i, k in enumerate(info["keys"])))
        done, lat_r, lat_c = 0, [], []
        cpu0 = cpu_seconds(child.pid)
        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(*(worker(i, k) for i, k in enumerate(info["keys"])))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(child.pid) - cpu0  # the Quota server process only
        await channel.close()
        return _summary(done, elapsed, lat_r, lat_c, cpu)
    finally:
        if child.stdin:
            child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)


@contextlib.contextmanager
def databases(engines: list[str]) -> Iterator[Callable[[str, str], str]]:
    """fresh(engine, name): a new empty database per run (SQLite file or PostgreSQL database)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="imagegate-bench-"))
        server = None
        if "postgresql" in engines:
            from tests.fixtures.postgres import local_cluster

            server = stack.enter_context(local_cluster(durable=True))

        def fresh(engine: str, name: str) -> str:
            if engine == "sqlite":
                return f"sqlite:///{tmp}/{name}.db"
            assert server is not None
            return server.create_database()

        yield fresh


def main() -> None:
    """Command line; prints one line per engine, mode and concurrency, and a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", help="one database URL (store level only)")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--modes", default="store,grpc")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=16, help="PostgreSQL worker threads")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--label", default=os.environ.get("BENCH_LABEL", ""))
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, int(args.concurrency), args.threads))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.url:
        for c in levels:
            r = asyncio.run(
                measure_store(args.url, seconds=args.seconds, concurrency=c, threads=args.threads)
            )
            print(f"store c={c}: {r['pairs_per_s']:.0f} reserve+commit/s {r}", flush=True)
        return
    engines = args.engines.split(",")
    results = []
    with databases(engines) as fresh:
        for engine in engines:
            for mode in args.modes.split(","):
                for c in levels:
                    url = fresh(engine, f"{mode}{c}")
                    fn = measure_store if mode == "store" else measure_grpc
                    r = asyncio.run(
                        fn(url, seconds=args.seconds, concurrency=c, threads=args.threads)
                    )
                    row = {
                        "label": args.label,
                        "engine": engine,
                        "mode": mode,
                        "concurrency": c,
                        **r,
                    }
                    results.append(row)
                    print(
                        f"{args.label:8} quota {engine:10} {mode:5} c={c:<3}"
                        f" {r['pairs_per_s']:8.0f} reserve+commit/s"
                        f"  p50 reserve {r['reserve_p50_ms']:.2f} ms"
                        f"  commit {r['commit_p50_ms']:.2f} ms"
                        f"  cpu {r['server_cpu_us_per_pair']:.0f} us/pair",
                        flush=True,
                    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
