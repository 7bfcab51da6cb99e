"""Scenario 2: capacity with a slow provider (500 ms at 64/256/1,024 in flight; 1,000 burst at 2 s)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.clients import channels, router_call
from bench.context import Ctx, Result, Target
from bench.emulator import adapter_env, available, start_emulator
from bench.loadgen import Call, closed_loop
from bench.procs import Proc
from bench.scenarios.common import fmt, note_deaths
from bench.stack import BenchStack, start_stack
from bench.stats import RunStats
from imagegate.router.v1 import router_pb2, router_pb2_grpc

PROVIDER = "together"
# Per-request deadline: 12x the 500 ms provider and 5x the 2 s one; bounds how long a level drains.
CLIENT_DEADLINE = 10.0


async def run(ctx: Ctx) -> Result:
    """Uses the Together emulator over HTTP when it has landed, else the local adapter's delay."""
    if available(PROVIDER):
        return await _run(ctx, emulated=True)
    return await _run(ctx, emulated=False)


@dataclass
class Drive:
    """What one phase drives: model, image side, allowed providers."""

    model: str
    """Model alias."""
    side: int
    """Image width and height."""
    providers: tuple[str, ...]
    """allowed_providers of each request."""


async def _start(
    ctx: Ctx, name: str, emulated: bool, latency: float
) -> tuple[BenchStack, Proc | None]:
    emu: Proc | None = None
    if emulated:
        emu = await start_emulator(ctx, PROVIDER, latency=latency, name=f"{name}-emulator")
        try:
            return await start_stack(ctx, name, extra=adapter_env(PROVIDER, emu)), emu
        except BaseException:
            await emu.stop()
            raise
    ms = str(int(latency * 1000))
    return await start_stack(ctx, name, extra={"IMAGEGATE_LOCAL_LATENCY_MS": ms}), None


async def _quiesce(stack: BenchStack, timeout: float = 30.0) -> None:
    """Waits until the Router reports nothing in flight (abandoned calls of the last level)."""
    (chan,) = channels(stack.services.address("router"), 1)
    stub = router_pb2_grpc.RouterServiceStub(chan)
    auth = (("authorization", f"Bearer {stack.api_key}"),)
    deadline = time.monotonic() + timeout
    async with chan:
        while time.monotonic() < deadline:
            resp = await stub.GetProviderStatus(
                router_pb2.GetProviderStatusRequest(), metadata=auth, timeout=5
            )
            if all(p.in_flight == 0 for p in resp.providers):
                return
            await asyncio.sleep(0.5)


async def _phase(
    ctx: Ctx,
    result: Result,
    runs: dict[str, RunStats],
    *,
    name: str,
    emulated: bool,
    latency: float,
    plan: list[tuple[str, int, int, float | None]],
) -> None:
    """One fresh stack (and emulator) for `plan`: (label, in flight, most requests, duration)."""
    what = Drive("flux-schnell", 256, (PROVIDER,)) if emulated else Drive("local", 64, ())
    stack, emu = await _start(ctx, name, emulated, latency)
    procs = [*stack.services.procs.values(), *([emu] if emu else [])]
    chans = channels(stack.services.address("router"), 8)
    try:
        call = router_call(
            chans,
            stack.api_key,
            model=what.model,
            side=what.side,
            providers=what.providers,
            timeout=CLIENT_DEADLINE,
        )
        await closed_loop("warmup", call, concurrency=8, requests=ctx.n(32, 4))
        for key, c, total, duration in plan:
            if not ctx.smoke:
                await _quiesce(stack, timeout=10.0)
            label = f"router, {latency * 1000:.0f} ms" if key != "burst" else "router burst, 2 s"
            runs[key] = await _measured(result, procs, label, call, c, total, duration)
    finally:
        for ch in chans:
            await ch.close()
        note_deaths(result, procs)
        await stack.stop()
        if emu is not None:
            await emu.stop()


async def _run(ctx: Ctx, *, emulated: bool) -> Result:
    if emulated:
        path = (
            "client -> Router -> Together adapter -> HTTP -> Together emulator process "
            "(256x256 base64 PNG), Quota+Metering on SQLite; 10 s client deadline; the 500 ms "
            "levels share one stack "
            "(the Router is idle again before each level), the burst gets a fresh stack and "
            "a 2 s emulator"
        )
    else:
        path = (
            "client -> Router -> local adapter with IMAGEGATE_LOCAL_LATENCY_MS (emulator not "
            "landed), Quota+Metering on SQLite"
        )
    result = Result("2. Slow provider capacity", path)
    runs: dict[str, RunStats] = {}
    # (key, in flight, most requests, seconds after which no new request starts)
    plan: list[tuple[str, int, int, float | None]] = [
        ("64", 64, 1280, 8.0),
        ("256", 256, 4096, 10.0),
        ("1024", 1024, 8192, 10.0),
    ]
    if ctx.smoke:
        plan = [("64", 4, 8, 5.0), ("256", 8, 16, 5.0), ("1024", 16, 32, 5.0)]
    await _phase(ctx, result, runs, name="capacity", emulated=emulated, latency=0.5, plan=plan)
    burst = ctx.n(1000, 32)
    await _phase(
        ctx,
        result,
        runs,
        name="burst",
        emulated=emulated,
        latency=2.0,
        plan=[("burst", burst, burst, None)],
    )
    _judge(result, runs)
    return result


async def _measured(
    result: Result,
    procs: list[Proc],
    label: str,
    call: Call,
    concurrency: int,
    total: int,
    duration: float | None,
) -> RunStats:
    for p in procs:
        p.reset_peak_rss()
    before = {p.name: p.cpu_seconds() for p in procs}
    stats = await closed_loop(
        label, call, concurrency=concurrency, requests=total, duration=duration, timeout=120
    )
    stats.cpu_seconds = {p.name: p.cpu_seconds() - before[p.name] for p in procs}
    row = stats.summary()
    row["peak_rss_mb"] = {p.name: p.peak_rss_mb() for p in procs}
    result.runs.append(row)
    return stats


def _judge(result: Result, runs: dict[str, RunStats]) -> None:
    s = runs.get("256")
    if s is None:
        result.targets.append(
            Target(
                "500 ms provider, 256 in flight", ">= 450 req/s, p99 <= 0.8 s", "not measured", None
            )
        )
    else:
        p99 = s.pct_ms(99) / 1000
        result.targets.append(
            Target(
                "500 ms provider, 256 in flight",
                ">= 450 req/s, p99 <= 0.8 s",
                f"{s.rps:,.0f} req/s, p99 {fmt(p99, ' s', 3)}, {sum(s.errors.values())} errors",
                s.rps >= 450 and p99 <= 0.8 and not s.errors,
            )
        )
    many = runs.get("1024")
    if many is not None:
        p99 = many.pct_ms(99) / 1000
        result.targets.append(
            Target(
                "500 ms provider, 1,024 in flight",
                "no errors, p99 <= 1.5 s",
                f"{many.rps:,.0f} req/s, p99 {fmt(p99, ' s', 3)}, "
                f"{sum(many.errors.values())} errors {dict(many.errors) or ''}",
                not many.errors and p99 <= 1.5,
            )
        )
    b = runs.get("burst")
    if b is None:
        result.targets.append(
            Target(
                "1,000 burst, 2 s provider",
                "no errors, p99 <= 3 s, Router RSS <= 300 MB",
                "not measured",
                None,
            )
        )
        return
    rss = next(
        (
            r["peak_rss_mb"].get("router")
            for r in result.runs
            if r["label"].startswith("router burst")
        ),
        None,
    )
    p99 = b.pct_ms(99) / 1000
    result.targets.append(
        Target(
            "1,000 burst, 2 s provider",
            "no errors, p99 <= 3 s, Router RSS <= 300 MB",
            f"{sum(b.errors.values())} errors {dict(b.errors) or ''}, p99 {fmt(p99, ' s', 3)}, "
            f"Router peak RSS {fmt(rss, ' MB', 0)}",
            not b.errors and p99 <= 3.0 and rss is not None and rss <= 300,
        )
    )
