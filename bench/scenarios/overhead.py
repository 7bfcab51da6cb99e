"""Scenario 1: Router vs the adapter called directly vs a raw gRPC echo vs the zero-work floor."""

from __future__ import annotations

from bench.clients import channels, direct_call, echo_call, provider_request, router_call
from bench.context import Ctx, Result, Target
from bench.floor import LEDGER_REPLY_BYTES, start_floor
from bench.provider_pb import response_size
from bench.scenarios.common import (
    added,
    fmt,
    interleaved,
    note_deaths,
    rss_table,
    start_echo,
)
from bench.stack import start_stack
from bench.stats import RunStats


async def run(ctx: Ctx) -> Result:
    """Concurrency 1, 16 and 64; each concurrency runs the three paths interleaved."""
    stack = await start_stack(ctx, "overhead")
    local = stack.services.address("local")
    reply = await response_size(local, stack.services.env)
    echo = await start_echo(ctx, reply)
    ledgers = await start_echo(ctx, LEDGER_REPLY_BYTES, name="floor-ledgers")
    floor = await start_floor(ctx, "shape", echo, ledgers, ledgers)
    floor_batched = await start_floor(ctx, "batched", echo, ledgers, ledgers)
    payload = provider_request(0).SerializeToString()
    result = Result(
        "1. Overhead",
        "client -> Router -> local adapter (64x64 PNG, 0 ms) with Quota+Metering on SQLite, vs "
        f"client -> local adapter directly, vs client -> raw grpc.aio echo ({len(payload)} B in, "
        f"{reply} B out), vs 'floor': the Router's shape with no work in it (bench/floor.py: "
        "a grpc.aio proxy that makes a reserve call, then the echo call, then commit and record "
        "calls after the reply, to echo processes; 'floor, batched': the same with the "
        "Router's rounds, a call that finds one of its kind on its way waits for the next "
        "round's single call); all separate processes on loopback",
    )
    if not stack.has_router:
        result.notes.append("services.router has not landed yet: Router path not measured")
    procs = [*stack.services.procs.values(), echo, ledgers, floor, floor_batched]
    for p in procs:
        p.reset_peak_rss()
    by_c: dict[int, dict[str, RunStats]] = {}
    try:
        for c in (1, 16, 64):
            nchan = 1 if c == 1 else 4
            chans = {
                "echo": channels(echo.address, nchan),
                "direct": channels(local, nchan),
                "floor": channels(floor.address, nchan),
            }
            paths = {
                "echo": echo_call(chans["echo"], payload),
                "direct": direct_call(chans["direct"], env=stack.services.env),
                "floor": echo_call(chans["floor"], payload),
            }
            if c > 1:
                # Serially nothing waits together: the batched floor is the plain one.
                chans["floor, batched"] = channels(floor_batched.address, nchan)
                paths["floor, batched"] = echo_call(chans["floor, batched"], payload)
            if stack.has_router:
                chans["router"] = channels(stack.services.address("router"), nchan)
                paths["router"] = router_call(chans["router"], stack.api_key)
                if c == 1:
                    paths["router, no request_id"] = router_call(
                        chans["router"], stack.api_key, request_ids=False
                    )
            total = ctx.n({1: 1500, 16: 4000, 64: 6000}[c], {1: 20, 16: 48, 64: 128}[c])
            stats = await interleaved(
                paths,
                concurrency=c,
                requests=total,
                rounds=1 if ctx.smoke else 2,
                duration=None if ctx.smoke else 3.5,
                warmup=ctx.n(max(50, c * 2), 4),
                cpu={
                    "echo": [echo],
                    "direct": [stack.services.procs["local"]],
                    "floor": [floor, echo, ledgers],
                    "floor, batched": [floor_batched, echo, ledgers],
                    "router": list(stack.services.procs.values()),
                    "router, no request_id": list(stack.services.procs.values()),
                },
            )
            by_c[c] = stats
            for label, s in stats.items():
                row = s.summary()
                if label.startswith("router"):
                    row["added_over_direct"] = added(stats["direct"], s)
                if label == "direct" or label.startswith("floor"):
                    row["added_over_echo"] = added(stats["echo"], s)
                result.runs.append(row)
            for group in chans.values():
                for ch in group:
                    await ch.close()
        result.extra["peak_rss_mb"] = rss_table(procs)
    finally:
        note_deaths(result, procs)
        for p in (floor_batched, floor, ledgers, echo):
            await p.stop()
        await stack.stop()
    judge(result, by_c)
    return result


def judge(result: Result, by_c: dict[int, dict[str, RunStats]]) -> None:
    """Adds the overhead and throughput targets."""
    serial = by_c.get(1, {})
    if "router" not in serial:
        for name, goal in (
            ("Router added latency p50, serial", "<= 2 ms"),
            ("Router added latency p99, serial", "<= 4 ms"),
            ("Full-path throughput / raw echo", ">= 0.30x"),
        ):
            result.targets.append(Target(name, goal, "not measured (no Router)", None))
        return
    a = added(serial["direct"], serial["router"])
    p50, p99 = a["p50_ms"], a["p99_ms"]
    f = added(serial["echo"], serial["floor"]) if "floor" in serial else {}
    result.targets.append(
        Target(
            "Router added latency p50, serial",
            "<= 2 ms",
            f"{fmt(p50, ' ms')} (Router p50 {fmt(serial['router'].pct_ms(50), ' ms')}, "
            f"direct {fmt(serial['direct'].pct_ms(50), ' ms')}; zero-work floor "
            f"{fmt(f.get('p50_ms'), ' ms')})",
            p50 is not None and p50 <= 2.0,
        )
    )
    result.targets.append(
        Target(
            "Router added latency p99, serial",
            "<= 4 ms",
            f"{fmt(p99, ' ms')} (Router p99 {fmt(serial['router'].pct_ms(99), ' ms')}, "
            f"direct {fmt(serial['direct'].pct_ms(99), ' ms')}; zero-work floor "
            f"{fmt(f.get('p99_ms'), ' ms')})",
            p99 is not None and p99 <= 4.0,
        )
    )
    trailer = sorted(serial["router"].reported_overhead_ms)
    if trailer and p50:
        t50 = trailer[len(trailer) // 2]
        result.targets.append(
            Target(
                "x-imagegate-overhead-ms vs the client's added latency, serial p50 (issue 14)",
                "within 20 %",
                f"{t50:.2f} ms vs {p50:.2f} ms ({(t50 - p50) / p50:+.0%})",
                abs(t50 - p50) <= 0.2 * p50,
            )
        )
    if "router, no request_id" in serial:
        claim = serial["router"].pct_ms(50) - serial["router, no request_id"].pct_ms(50)
        result.targets.append(
            Target(
                "Shared idempotency claim + stored result, serial p50 (issue 12)",
                "<= 0.5 ms",
                f"{claim:+.2f} ms (with request_id {fmt(serial['router'].pct_ms(50), ' ms')}, "
                f"without {fmt(serial['router, no request_id'].pct_ms(50), ' ms')})",
                claim <= 0.5,
            )
        )
    router_best = max(s["router"].rps for s in by_c.values())
    echo_best = max(s["echo"].rps for s in by_c.values())
    floor_best = max((s["floor"].rps for s in by_c.values() if "floor" in s), default=0.0)
    ratio = router_best / echo_best if echo_best else 0.0
    result.targets.append(
        Target(
            "Full-path throughput / raw echo",
            ">= 0.30x",
            f"{ratio:.2f}x ({router_best:,.0f} vs {echo_best:,.0f} req/s, best concurrency each;"
            f" zero-work floor {floor_best / echo_best if echo_best else 0.0:.2f}x)",
            ratio >= 0.30,
        )
    )
    loaded = by_c.get(64, {})
    if "router" in loaded and "floor" in loaded:
        cpu = {k: 1000 * sum(s.cpu_seconds.values()) / max(1, s.ok) for k, s in loaded.items()}
        result.targets.append(
            Target(
                "CPU per request, every gateway process, 0 ms provider, 64 in flight (issue 14)",
                "<= 2.5 ms",
                f"{cpu['router']:.2f} ms (zero-work floor of the same calls "
                f"{cpu.get('floor, batched', float('nan')):.2f} ms in rounds, "
                f"{cpu['floor']:.2f} ms one call each; the adapter alone {cpu['direct']:.2f} ms)",
                cpu["router"] <= 2.5,
            )
        )
