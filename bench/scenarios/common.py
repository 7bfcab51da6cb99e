"""Helpers shared by scenarios: interleaved rounds, the echo process, added-latency rows."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bench.context import Ctx, Result
from bench.loadgen import Call, closed_loop
from bench.procs import Proc, loopback, python_module, spawn, wait_port
from bench.stats import RunStats


async def interleaved(
    paths: Mapping[str, Call],
    *,
    concurrency: int,
    requests: int,
    rounds: int,
    warmup: int,
    duration: float | None = None,
    cpu: Mapping[str, Sequence[Proc]] | None = None,
    alternate: bool = False,
) -> dict[str, RunStats]:
    """Runs every path `rounds` times in turn (A B C A B C ...) and merges each path's rounds.

    Interleaving spreads machine noise (other tenants of the VM, CPU frequency) over all paths.
    `cpu` names, per path, the server processes whose CPU time is charged to it. `alternate`
    reverses the order every other round (A B B A ...), so going first favours no path.
    """
    merged = {label: RunStats(label, concurrency) for label in paths}
    per_round = max(1, requests // rounds)
    for n in range(rounds):
        order = list(paths.items())
        if alternate and n % 2:
            order.reverse()
        for label, call in order:
            watched = list((cpu or {}).get(label, ()))
            if warmup:
                await closed_loop(
                    label, call, concurrency=concurrency, requests=warmup, duration=duration
                )
            before = [p.cpu_seconds() for p in watched]
            stats = await closed_loop(
                label, call, concurrency=concurrency, requests=per_round, duration=duration
            )
            into = merged[label]
            for p, b in zip(watched, before, strict=True):
                into.cpu_seconds[p.name] = into.cpu_seconds.get(p.name, 0.0) + p.cpu_seconds() - b
            into.latencies.extend(stats.latencies)
            into.errors.update(stats.errors)
            for code, text in stats.error_samples.items():
                into.error_samples.setdefault(code, text)
            into.elapsed += stats.elapsed
            into.reported_overhead_ms.extend(stats.reported_overhead_ms)
    return merged


def added(base: RunStats, over: RunStats) -> dict[str, float | None]:
    """Percentile-by-percentile latency that `over` adds to `base`, in ms."""
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        value = over.pct_ms(q) - base.pct_ms(q)
        out[f"p{q}_ms"] = None if math.isnan(value) else round(value, 3)
    return out


async def start_echo(ctx: Ctx, reply_bytes: int, name: str = "echo") -> Proc:
    """The raw echo server as its own process."""
    address = loopback()
    proc = await spawn(
        name,
        python_module(
            "bench.echo", "--port", address.rsplit(":", 1)[1], "--reply-bytes", str(reply_bytes)
        ),
        env=dict(os.environ),
        address=address,
        log_dir=ctx.logs,
    )
    await wait_port(proc)
    return proc


def note_deaths(result: Result, procs: Sequence[Proc]) -> None:
    """Records in the result any process that exited before the bench stopped it."""
    for p in procs:
        code = p.process.returncode
        if code is not None:
            last = p.tail(3).replace("\n", " / ")[-400:]
            result.notes.append(f"{p.name} exited with code {code} during the run: {last}")


def rss_table(procs: Sequence[Proc]) -> dict[str, Any]:
    """Peak RSS (VmHWM, MiB) of each process since its last reset."""
    return {p.name: p.peak_rss_mb() for p in procs}


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    """A number for a table cell; "n/a" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"
