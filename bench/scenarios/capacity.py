"""Scenario 2: capacity with a slow provider (500 ms at 64/256/1,024 in flight; 1,000 burst at 2 s)."""

from __future__ import annotations

from bench.clients import channels, router_call
from bench.context import Ctx, Result, Target
from bench.emulator import adapter_env, available, set_latency, start_emulator
from bench.loadgen import Call, closed_loop
from bench.procs import Proc
from bench.scenarios.common import fmt, note_deaths
from bench.stack import start_stack
from bench.stats import RunStats

PROVIDER = "together"


async def run(ctx: Ctx) -> Result:
    """Uses the Together emulator over HTTP when it has landed, else the local adapter's delay."""
    if available(PROVIDER):
        return await _run(ctx, emulated=True)
    return await _run(ctx, emulated=False)


async def _run(ctx: Ctx, *, emulated: bool) -> Result:
    emu: Proc | None = None
    if emulated:
        emu = await start_emulator(ctx, PROVIDER, latency=0.5)
        stack = await start_stack(ctx, "capacity", extra=adapter_env(PROVIDER, emu))
        model, side = "flux-schnell", 256
        providers: tuple[str, ...] = (PROVIDER,)
        path = (
            "client -> Router -> Together adapter -> HTTP -> Together emulator process "
            "(500 ms, then 2 s; 256x256 base64 PNG), Quota+Metering on SQLite"
        )
    else:
        stack = await start_stack(ctx, "capacity", extra={"IMAGEGATE_LOCAL_LATENCY_MS": "500"})
        model, side, providers = "local", 64, ()
        path = (
            "client -> Router -> local adapter with IMAGEGATE_LOCAL_LATENCY_MS=500 (emulator not "
            "landed), Quota+Metering on SQLite"
        )
    result = Result("2. Slow provider capacity", path)
    procs = [*stack.services.procs.values(), *([emu] if emu else [])]
    runs: dict[str, RunStats] = {}
    try:
        if not stack.has_router:
            result.notes.append("services.router has not landed yet")
            return result
        chans = channels(stack.services.address("router"), 8)
        call = router_call(
            chans, stack.api_key, model=model, side=side, providers=providers, timeout=30
        )
        await closed_loop("warmup", call, concurrency=16, requests=ctx.n(64, 4))
        # (in flight, most requests, seconds after which no new request starts)
        plan = [(64, 1280, 12.0), (256, 5120, 15.0), (1024, 8192, 15.0)]
        if ctx.smoke:
            plan = [(4, 8, 5.0), (8, 16, 5.0), (16, 32, 5.0)]
        for c, total, duration in plan:
            runs[f"{c}"] = await _measured(
                result, procs, "router, 500 ms", call, c, total, duration
            )
        if emu is not None:
            await set_latency(emu, 2.0)
            burst = ctx.n(1000, 32)
            runs["burst"] = await _measured(
                result, procs, "router burst, 2 s", call, burst, burst, None
            )
        else:
            result.notes.append("burst at 2 s needs the emulator (latency switch): not run")
        for ch in chans:
            await ch.close()
    finally:
        note_deaths(result, procs)
        await stack.stop()
        if emu is not None:
            await emu.stop()
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
                "500 ms provider, 256 in flight", ">= 400 req/s, p99 <= 0.8 s", "not measured", None
            )
        )
    else:
        p99 = s.pct_ms(99) / 1000
        result.targets.append(
            Target(
                "500 ms provider, 256 in flight",
                ">= 400 req/s, p99 <= 0.8 s",
                f"{s.rps:,.0f} req/s, p99 {fmt(p99, ' s', 3)}, {sum(s.errors.values())} errors",
                s.rps >= 400 and p99 <= 0.8 and not s.errors,
            )
        )
    b = runs.get("burst")
    if b is None:
        result.targets.append(
            Target(
                "1,000 burst, 2 s provider",
                "no errors, p99 <= 4 s, Router RSS <= 300 MB",
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
            "no errors, p99 <= 4 s, Router RSS <= 300 MB",
            f"{sum(b.errors.values())} errors {dict(b.errors) or ''}, p99 {fmt(p99, ' s', 3)}, "
            f"Router peak RSS {fmt(rss, ' MB', 0)}",
            not b.errors and p99 <= 4.0 and rss is not None and rss <= 300,
        )
    )
