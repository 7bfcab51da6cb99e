"""Measures reserve+commit per second on QuotaStore directly: `python -m services.quota.bench_store URL`."""

from __future__ import annotations

import asyncio
import sys
import time

from services.quota.plans import load_plans
from services.quota.store import QuotaStore, ReserveArgs


async def measure(url: str, *, seconds: float = 3.0, concurrency: int = 32) -> float:
    """Reserve+commit pairs per second across `concurrency` tenants on an enterprise plan."""
    store = QuotaStore.open(url, plans=load_plans(), threads=concurrency)
    tenants = [
        (await store.create_tenant(request_id=f"b{i}", name=f"bench{i}", plan="enterprise")).id
        for i in range(concurrency)
    ]
    done = 0
    end = time.perf_counter() + seconds

    async def worker(tenant_id: str) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < end:
            n += 1
            res = await store.reserve(
                ReserveArgs(
                    request_id=f"{tenant_id}-{n}-{time.time_ns()}", tenant_id=tenant_id, images=1
                )
            )
            await store.commit(res.reservation.id, images=1)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in tenants))
    rate = done / (time.perf_counter() - start)
    await store.close()
    return rate


if __name__ == "__main__":
    print(f"{asyncio.run(measure(sys.argv[1])):.0f} reserve+commit/s")
