"""RecordUsage per second on SQLite and PostgreSQL, on MeteringStore and over gRPC; and
ListPrices / QuotePrice per second over gRPC.

    python -m bench.metering_store                 # both engines, store and gRPC, 1 and 16
    python -m bench.metering_store --engines sqlite --modes store,grpc,prices

Each call records a new request (one succeeded attempt on a priced model), so every call is an
INSERT ... ON CONFLICT DO NOTHING that inserts. gRPC runs a real Metering server in a child
process on loopback. PostgreSQL is a throwaway cluster (tests/pg.py) with fsync on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from bench.quota_store import cpu_seconds, databases
from imagegate.common.v1 import image_pb2
from imagegate.metering.v1 import metering_pb2
from services.metering.catalog import load_catalog
from services.metering.store import MeteringStore

_PROVIDER, _MODEL = "fal", "fal-ai/flux/schnell"


def usage_request(tenant: str, request_id: str) -> metering_pb2.RecordUsageRequest:
    """A successful one-attempt request on a priced model."""
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(datetime.now(UTC))
    return metering_pb2.RecordUsageRequest(
        request_id=request_id,
        tenant_id=tenant,
        model="flux-schnell",
        outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
        attempts=[
            metering_pb2.BilledAttempt(
                provider=_PROVIDER,
                provider_model=_MODEL,
                attempt_number=1,
                succeeded=True,
                usage=image_pb2.Usage(images=1, megapixels=1.048576),
            )
        ],
        occurred_at=occurred,
        trace_id="bench",
    )


async def _drive(
    concurrency: int,
    seconds: float,
    call: Callable[[int, int], Awaitable[object]],
    pid: int | None = None,
) -> dict[str, float]:
    lat: list[float] = []
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < end:
            n += 1
            t0 = time.perf_counter()
            await call(i, n)
            lat.append(time.perf_counter() - t0)
            done += 1

    end = time.perf_counter() + 0.3  # warm-up
    await asyncio.gather(*(worker(-1 - i) for i in range(concurrency)))
    lat.clear()
    done = 0
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    end = start + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    return {
        "per_s": done / elapsed,
        "p50_ms": statistics.median(lat) * 1e3 if lat else 0.0,
        "server_cpu_us_per_call": cpu / done * 1e6 if done else 0.0,
    }


async def measure_store(
    url: str, *, seconds: float, concurrency: int, threads: int = 8
) -> dict[str, float]:
    """Store-level record_usage, `concurrency` workers (one tenant each)."""
    store = MeteringStore.open(url, catalog=load_catalog(), threads=threads)
    stamp = time.time_ns()

    async def call(i: int, n: int) -> object:
        return await store.record_usage(usage_request(f"t{i}", f"s{stamp}-{i}-{n}"))

    try:
        return await _drive(concurrency, seconds, call)
    finally:
        await store.close()


async def _serve(url: str, threads: int) -> None:
    """Child process: a Metering server on loopback; prints {"address"}; stops on stdin EOF."""
    from imagegate.telemetry import setup_telemetry
    from services.metering.server import start_metering_server

    store = MeteringStore.open(url, catalog=load_catalog(), threads=threads)
    server = await start_metering_server(
        store, address="127.0.0.1:0", telemetry=setup_telemetry("metering-bench")
    )
    print(json.dumps({"address": server.address}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def measure_grpc(
    url: str, *, seconds: float, concurrency: int, threads: int = 8, rpc: str = "RecordUsage"
) -> dict[str, float]:
    """One RPC kind over gRPC against a server in a child process."""
    from imagegate.grpckit.channel import create_channel
    from imagegate.metering.v1 import metering_pb2_grpc

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.metering_store",
        "--serve",
        url,
        "--threads",
        str(threads),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        info = json.loads(await child.stdout.readline())
        channel = create_channel(info["address"])
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        stamp = time.time_ns()
        quote = metering_pb2.QuotePriceRequest(
            provider=_PROVIDER, provider_model=_MODEL, width=1024, height=1024, num_images=1
        )

        async def call(i: int, n: int) -> object:
            if rpc == "ListPrices":
                return await stub.ListPrices(metering_pb2.ListPricesRequest(), timeout=10)
            if rpc == "QuotePrice":
                return await stub.QuotePrice(quote, timeout=10)
            return await stub.RecordUsage(usage_request(f"t{i}", f"g{stamp}-{i}-{n}"), timeout=10)

        result = await _drive(concurrency, seconds, call, child.pid)
        await channel.close()
        return result
    finally:
        if child.stdin:
            child.stdin.close()
        await asyncio.wait_for(child.wait(), 30)


def main() -> None:
    """Command line; prints one line per engine, mode and concurrency, and a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--modes", default="store,grpc,prices")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=16, help="PostgreSQL worker threads")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--label", default=os.environ.get("BENCH_LABEL", ""))
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.threads))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = args.engines.split(",")
    modes = args.modes.split(",")
    results = []
    with databases(engines) as fresh:
        runs: list[tuple[str, str, str]] = []
        for engine in engines:
            runs += [(engine, m, "RecordUsage") for m in modes if m in ("store", "grpc")]
        if "prices" in modes:
            runs += [(engines[0], "grpc", "ListPrices"), (engines[0], "grpc", "QuotePrice")]
        for engine, mode, rpc in runs:
            for c in levels:
                url = fresh(engine, f"m{mode}{rpc}{c}")
                if mode == "store":
                    r = asyncio.run(
                        measure_store(
                            url, seconds=args.seconds, concurrency=c, threads=args.threads
                        )
                    )
                else:
                    r = asyncio.run(
                        measure_grpc(
                            url, seconds=args.seconds, concurrency=c, threads=args.threads, rpc=rpc
                        )
                    )
                row = {"label": args.label, "engine": engine, "mode": mode, "rpc": rpc}
                results.append({**row, "concurrency": c, **r})
                print(
                    f"{args.label:8} metering {engine:10} {mode:5} {rpc:11} c={c:<3}"
                    f" {r['per_s']:8.0f}/s  p50 {r['p50_ms']:.2f} ms"
                    f"  cpu {r['server_cpu_us_per_call']:.0f} us/call",
                    flush=True,
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
