"""Scenario 5: scenario 1's Router path with tracing exported over OTLP versus tracing off."""

from __future__ import annotations

import json
from pathlib import Path

from bench.clients import channels, direct_call, router_call
from bench.context import Ctx, Result, Target
from bench.procs import Proc, loopback, python_module, spawn, wait_port
from bench.scenarios.common import added, fmt, interleaved, note_deaths
from bench.stack import BenchStack, start_stack
from bench.stats import RunStats


async def start_sink(ctx: Ctx) -> tuple[Proc, str]:
    """The OTLP/gRPC stub collector process; returns it and its stats file."""
    address = loopback()
    stats = ctx.work / "otlp-sink.json"
    proc = await spawn(
        "otlp-sink",
        python_module(
            "bench.otlp_sink", "--port", address.rsplit(":", 1)[1], "--stats", str(stats)
        ),
        env={"PATH": "/usr/bin:/bin"},
        address=address,
        log_dir=ctx.logs,
    )
    await wait_port(proc)
    return proc, str(stats)


async def run(ctx: Ctx) -> Result:
    """Three identical stacks side by side (exporting, default, SDK off), driven in alternation."""
    sink, stats_file = await start_sink(ctx)
    started: list[BenchStack] = []
    try:
        started.append(await start_stack(ctx, "trace-off"))
        # SDK disabled: the providers hand out no-op tracers, so no span is even created.
        started.append(await start_stack(ctx, "trace-nosdk", extra={"OTEL_SDK_DISABLED": "true"}))
        started.append(
            await start_stack(
                ctx,
                "trace-on",
                extra={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.address}",
                    "OTEL_EXPORTER_OTLP_INSECURE": "true",
                },
            )
        )
    except BaseException:
        for st in started:
            await st.stop()
        await sink.stop()
        raise
    off, nosdk, on = started
    result = Result(
        "5. Tracing cost",
        "scenario 1's Router path (64x64 local image): tracing exporting "
        "every span (parentbased_always_on, BatchSpanProcessor, OTLP/gRPC to a stub collector "
        "process that decodes, counts and drops) vs no exporter configured (the default: spans "
        "are still created in-process) vs OTEL_SDK_DISABLED=true (no spans at all); three "
        "identical stacks side by side, driven in alternation",
    )
    by_c: dict[int, dict[str, RunStats]] = {}
    try:
        if not (off.has_router and on.has_router and nosdk.has_router):
            result.notes.append("services.router has not landed yet: nothing to compare")
            return result
        for c in (1, 16):
            nchan = 1 if c == 1 else 4
            chans = [
                channels(off.services.address("router"), nchan),
                channels(on.services.address("router"), nchan),
                channels(off.services.address("local"), nchan),
                channels(on.services.address("local"), nchan),
                channels(nosdk.services.address("router"), nchan),
            ]
            stats = await interleaved(
                {
                    "router, tracing off": router_call(chans[0], off.api_key),
                    "router, tracing on": router_call(chans[1], on.api_key),
                    "router, SDK disabled": router_call(chans[4], nosdk.api_key),
                    "direct, tracing off": direct_call(chans[2], env=off.services.env),
                    "direct, tracing on": direct_call(chans[3], env=on.services.env),
                },
                concurrency=c,
                requests=ctx.n(1500 if c == 1 else 3000, 16),
                rounds=1 if ctx.smoke else 2,
                duration=None if ctx.smoke else 2.5,
                warmup=ctx.n(50, 2),
                cpu={
                    "router, tracing off": list(off.services.procs.values()),
                    "router, tracing on": list(on.services.procs.values()),
                    "router, SDK disabled": list(nosdk.services.procs.values()),
                },
            )
            by_c[c] = stats
            for label, s in stats.items():
                row = s.summary()
                if label in ("router, tracing on", "router, SDK disabled"):
                    row["added_vs_tracing_off"] = added(stats["router, tracing off"], s)
                result.runs.append(row)
            for group in chans:
                for ch in group:
                    await ch.close()
    finally:
        note_deaths(
            result,
            [
                *on.services.procs.values(),
                *off.services.procs.values(),
                *nosdk.services.procs.values(),
                sink,
            ],
        )
        await nosdk.stop()
        await on.stop()
        await off.stop()
        await sink.stop()
    try:
        result.extra["otlp_sink"] = json.loads(Path(stats_file).read_text())
    except OSError:
        result.notes.append("the OTLP sink wrote no statistics")
    for c, stats in by_c.items():
        on_s, off_s = stats["router, tracing on"], stats["router, tracing off"]
        nosdk_s = stats["router, SDK disabled"]
        cpu_nosdk = sum(nosdk_s.cpu_seconds.values()) / max(1, nosdk_s.requests)
        delta = added(off_s, on_s)
        cpu_on = sum(on_s.cpu_seconds.values()) / max(1, on_s.requests)
        cpu_off = sum(off_s.cpu_seconds.values()) / max(1, off_s.requests)
        cost = {
            "added_p50_ms": delta["p50_ms"],
            "added_p99_ms": delta["p99_ms"],
            "rps_off": round(off_s.rps, 1),
            "rps_on": round(on_s.rps, 1),
            "cpu_ms_per_request_all_services": round((cpu_on - cpu_off) * 1000, 3),
            "rps_sdk_disabled": round(nosdk_s.rps, 1),
            "cpu_ms_per_request_default_vs_sdk_disabled": round((cpu_off - cpu_nosdk) * 1000, 3),
        }
        result.extra[f"tracing cost at concurrency {c}"] = cost
        result.targets.append(
            Target(
                f"Tracing on vs off, concurrency {c}",
                "report (no target)",
                f"{fmt(delta['p50_ms'], ' ms')} p50, {fmt(delta['p99_ms'], ' ms')} p99, "
                f"{cost['cpu_ms_per_request_all_services']:+.2f} ms CPU/request over all "
                f"services, {off_s.rps:,.0f} -> {on_s.rps:,.0f} req/s; SDK disabled: "
                f"{nosdk_s.rps:,.0f} req/s, in-process spans cost "
                f"{cost['cpu_ms_per_request_default_vs_sdk_disabled']:+.2f} ms CPU/request",
                None,
            )
        )
    return result
