"""`python -m bench.probe`: CPU per request of every gateway process and serial added latency, fast.

One stack (Router, Quota, Metering on SQLite, local adapter at 0 ms), then: serial Router vs
direct-adapter calls alternating (added latency p50/p99, the Router's overhead trailer next to
what the client measured), and a closed loop at `--concurrency` (CPU ms per request of each
process from /proc, summed). For before/after comparisons while working; `make bench` is the
full report.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench.clients import channels, direct_call, router_call
from bench.context import cleanup, new_ctx
from bench.emulator import adapter_env, start_emulator
from bench.procs import Proc
from bench.scenarios.common import interleaved
from bench.stack import BenchStack, start_stack
from bench.stats import RunStats


async def main_async(concurrency: int, requests: int, serial: int, latency: float | None) -> None:
    """Runs the two measurements and prints one block of figures."""
    ctx = new_ctx(smoke=False)
    emu: Proc | None = None
    try:
        if latency is not None:
            emu = await start_emulator(ctx, "together", latency=latency)
            stack = await start_stack(ctx, "probe", extra=adapter_env("together", emu))
            await capacity(stack, emu, concurrency, requests)
            return
        stack = await start_stack(ctx, "probe")
        procs = list(stack.services.procs.values())
        router_ch = channels(stack.services.address("router"), 1)
        local_ch = channels(stack.services.address("local"), 1)
        paths = {
            "router": router_call(router_ch, stack.api_key),
            "direct": direct_call(local_ch, env=stack.services.env),
        }
        s = await interleaved(
            paths, concurrency=1, requests=serial, rounds=4, warmup=50, cpu={"router": procs}
        )
        r, d = s["router"], s["direct"]
        trailer = sorted(r.reported_overhead_ms)
        t50 = trailer[len(trailer) // 2] if trailer else float("nan")
        print(f"load average {os.getloadavg()[0]:.2f}")
        print(
            f"serial: added p50 {r.pct_ms(50) - d.pct_ms(50):.2f} ms, p99 "
            f"{r.pct_ms(99) - d.pct_ms(99):.2f} ms (router {r.pct_ms(50):.2f}/{r.pct_ms(99):.2f},"
            f" direct {d.pct_ms(50):.2f}/{d.pct_ms(99):.2f}); trailer p50 {t50:.2f} ms; "
            f"CPU/request {1000 * sum(r.cpu_seconds.values()) / max(1, r.ok):.2f} ms"
        )
        chans = channels(stack.services.address("router"), 4)
        load = await interleaved(
            {"router": router_call(chans, stack.api_key)},
            concurrency=concurrency,
            requests=requests,
            rounds=1,
            warmup=concurrency * 2,
            cpu={"router": procs},
        )
        print(f"c={concurrency}: {_figures(load['router'])}")
        print(f"load average {os.getloadavg()[0]:.2f}")
        for ch in [*router_ch, *local_ch, *chans]:
            await ch.close()
        await stack.stop()
    finally:
        if emu is not None:
            await emu.stop()
        cleanup(ctx)


async def capacity(stack: BenchStack, emu: Proc, concurrency: int, requests: int) -> None:
    """Router -> Together adapter -> emulator at `concurrency`: req/s, p99, CPU per process."""
    procs = list(stack.services.procs.values())
    chans = channels(stack.services.address("router"), 8)
    call = router_call(
        chans, stack.api_key, model="flux-schnell", side=256, providers=("together",)
    )
    load = await interleaved(
        {"router": call},
        concurrency=concurrency,
        requests=requests,
        rounds=1,
        warmup=concurrency,
        cpu={"router": [*procs, emu]},
    )
    st = load["router"]
    per = {k: 1000 * v / max(1, st.ok) for k, v in st.cpu_seconds.items()}
    print(
        f"load average {os.getloadavg()[0]:.2f}\nc={concurrency} via Together emulator: "
        f"{st.rps:.0f} req/s, p50 {st.pct_ms(50):.0f} ms, p99 {st.pct_ms(99):.0f} ms, errors "
        f"{dict(st.errors)}; CPU ms/request: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
    )
    for ch in chans:
        await ch.close()
    await stack.stop()


def _figures(st: RunStats) -> str:
    """req/s, p50/p99, errors and CPU ms per successful request, summed and by process."""
    per = {p: 1000 * v / max(1, st.ok) for p, v in st.cpu_seconds.items()}
    return (
        f"{st.rps:.0f} req/s, p50 {st.pct_ms(50):.2f} ms, p99 {st.pct_ms(99):.2f} ms, errors "
        f"{dict(st.errors)}; CPU ms/request total {sum(per.values()):.2f}: "
        + ", ".join(f"{p} {v:.2f}" for p, v in per.items())
    )


async def ab(setting: str, concurrency: int, requests: int, serial: int) -> None:
    """Two stacks side by side, B with one extra environment setting, measured in alternating
    rounds so that the machine's noise (other tenants of the VM) falls on both alike."""
    name, _, value = setting.partition("=")
    ctx = new_ctx(smoke=False)
    try:
        stacks = {
            "A": await start_stack(ctx, "probe-a"),
            "B": await start_stack(ctx, "probe-b", extra={name: value}),
        }
        procs = {k: list(st.services.procs.values()) for k, st in stacks.items()}
        chans = {k: channels(st.services.address("router"), 4) for k, st in stacks.items()}
        calls = {k: router_call(chans[k], st.api_key) for k, st in stacks.items()}
        print(f"A: defaults; B: {setting}; load average {os.getloadavg()[0]:.2f}")
        runs = {
            "serial": await interleaved(
                calls,
                concurrency=1,
                requests=serial,
                rounds=6,
                warmup=20,
                cpu=procs,
                alternate=True,
            ),
            f"c={concurrency}": await interleaved(
                calls,
                concurrency=concurrency,
                requests=requests,
                rounds=6,
                warmup=64,
                cpu=procs,
                alternate=True,
            ),
        }
        for cell, stats in runs.items():
            for k, st in stats.items():
                print(f"{cell} {k}: {_figures(st)}")
        print(f"load average {os.getloadavg()[0]:.2f}")
        for cs in chans.values():
            for ch in cs:
                await ch.close()
        for stack in stacks.values():
            await stack.stop()
    finally:
        cleanup(ctx)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--serial", type=int, default=800)
    parser.add_argument(
        "--latency", type=float, default=None, help="Together emulator path with this latency (s)"
    )
    parser.add_argument(
        "--ab",
        metavar="NAME=VALUE",
        help="compare the defaults (A) with one environment setting (B), interleaved",
    )
    args = parser.parse_args()
    if args.ab:
        asyncio.run(ab(args.ab, args.concurrency, args.requests, args.serial))
        return
    asyncio.run(main_async(args.concurrency, args.requests, args.serial, args.latency))


if __name__ == "__main__":
    main()
