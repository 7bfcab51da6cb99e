"""Closed-loop asyncio load generator: N coroutines share channels, perf_counter per call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc

from bench.stats import RunStats

# One call: gets a sequence number, returns the Router's self-reported overhead in ms (or None).
Call = Callable[[int], Awaitable[float | None]]


def error_detail(err: BaseException) -> str:
    """The status message of a failed call (first 300 characters)."""
    if isinstance(err, grpc.aio.AioRpcError):
        return (err.details() or "")[:300]
    return str(err)[:300]


def error_name(err: BaseException) -> str:
    """A short label for a failed call: the gRPC status code, else the exception type."""
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code().name
    return type(err).__name__


async def closed_loop(
    label: str,
    call: Call,
    *,
    concurrency: int,
    requests: int,
    warmup: int = 0,
    duration: float | None = None,
    timeout: float | None = None,
) -> RunStats:
    """Runs `requests` calls keeping `concurrency` in flight (after `warmup` unmeasured calls).

    `duration` stops issuing new calls after that many seconds (calls in flight finish), so a
    slow path cannot stretch the run. `timeout` bounds the whole measured part; calls still
    running then are cancelled and counted as "CANCELLED_BY_BENCH".
    """
    counter = iter(range(10**12))
    if warmup:
        await _drive(call, counter, min(concurrency, warmup), warmup, None, duration)
    stats = RunStats(label, concurrency)
    started = time.perf_counter()
    await _drive(call, counter, concurrency, requests, stats, duration, timeout)
    stats.elapsed = time.perf_counter() - started
    return stats


async def _drive(
    call: Call,
    counter: Iterator[int],
    concurrency: int,
    requests: int,
    stats: RunStats | None,
    duration: float | None,
    timeout: float | None = None,
) -> None:
    remaining = [requests]
    stop_at = time.perf_counter() + duration if duration is not None else float("inf")

    async def worker() -> None:
        while remaining[0] > 0 and time.perf_counter() < stop_at:
            remaining[0] -= 1
            n = next(counter)
            t0 = time.perf_counter()
            try:
                overhead = await call(n)
            except asyncio.CancelledError:
                if stats is not None:
                    stats.errors["CANCELLED_BY_BENCH"] += 1
                raise
            except Exception as err:
                if stats is not None:
                    name = error_name(err)
                    stats.errors[name] += 1
                    stats.error_samples.setdefault(name, error_detail(err))
                continue
            if stats is not None:
                stats.latencies.append(time.perf_counter() - t0)
                if overhead is not None:
                    stats.reported_overhead_ms.append(overhead)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()
