"""`python -m bench.profile [--path router|capacity|large] [--seconds S]`: py-spy every service."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.clients import channels, router_call
from bench.context import cleanup, new_ctx
from bench.emulator import adapter_env, start_emulator
from bench.loadgen import closed_loop
from bench.peer import imagegate_call
from bench.procs import Proc
from bench.stack import start_stack

# Frames every process has (event loop, thread start-up, entry points): they say nothing.
_PLUMBING = ("asyncio/", "<frozen runpy>", "threading.py", "concurrent/futures", "__main__.py")


def top_functions(
    raw: Path, limit: int = 25
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) shares of GIL-holding samples per function, from py-spy raw output.

    Inclusive skips event-loop and start-up plumbing; self is the leaf frame of each sample.
    """
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for frame in set(frames):
            if not any(p in frame for p in _PLUMBING):
                inclusive[frame] += n
    if not total:
        return [], []
    return (
        [(f, c / total) for f, c in inclusive.most_common(limit)],
        [(f, c / total) for f, c in leaf.most_common(limit // 2)],
    )


async def record(proc: Proc, seconds: float, out: Path) -> Path:
    """Runs py-spy against one process (GIL-holding samples only) and returns the raw file."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / f"{proc.name}.txt"
    spy = await asyncio.create_subprocess_exec(
        pyspy,
        "record",
        "--pid",
        str(proc.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--gil",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await spy.wait()
    return raw


async def main_async(path: str, seconds: float, concurrency: int, out: Path) -> None:
    """Starts the stack, warms it, then loads it while py-spy samples every process."""
    ctx = new_ctx(smoke=False)
    emu: Proc | None = None
    try:
        chans: list[Any]
        if path == "capacity":
            emu = await start_emulator(ctx, "together", latency=0.5)
            stack = await start_stack(ctx, "profile", extra=adapter_env("together", emu))
            chans = channels(stack.services.address("router"), 4)
            call = router_call(
                chans, stack.api_key, model="flux-schnell", side=256, providers=("together",)
            )
        elif path == "large":
            # `make bench-peer`'s path: 1024x1024 PNGs in base64 JSON from the OpenAI emulator.
            emu = await start_emulator(ctx, "openai", latency=0.0)
            stack = await start_stack(ctx, "profile", extra=adapter_env("openai", emu))
            chans = channels(stack.services.address("router"), 4)
            call = imagegate_call(stack, chans)
        else:
            stack = await start_stack(ctx, "profile")
            chans = channels(stack.services.address("router"), 4)
            call = router_call(chans, stack.api_key, model="local", side=64)
        await closed_loop("warmup", call, concurrency=concurrency, requests=200)
        procs = [*stack.services.procs.values(), *([emu] if emu else [])]
        out.mkdir(parents=True, exist_ok=True)
        load = asyncio.create_task(
            closed_loop("load", call, concurrency=concurrency, requests=10**9, duration=seconds + 2)
        )
        raws = await asyncio.gather(*(record(p, seconds, out) for p in procs))
        stats = await load
        print(
            f"load: {stats.rps:.0f} req/s, p50 {stats.pct_ms(50):.1f} ms, errors {dict(stats.errors)}"
        )
        for proc, raw in zip(procs, raws, strict=True):
            print(f"\n== {proc.name} (pid {proc.pid}) top functions, % of GIL-holding samples")
            if raw.exists():
                inclusive, own = top_functions(raw)
                for frame, share in inclusive:
                    print(f"  {share * 100:5.1f}%  {frame}")
                print("  -- self time (leaf frames)")
                for frame, share in own:
                    print(f"  {share * 100:5.1f}%  {frame}")
        for ch in chans:
            await ch.close()
        await stack.stop()
    finally:
        if emu is not None:
            await emu.stop()
        cleanup(ctx)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--path", choices=("router", "capacity", "large"), default="router")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/imagegate-profile"))
    args = parser.parse_args()
    asyncio.run(main_async(args.path, args.seconds, args.concurrency, args.out))


if __name__ == "__main__":
    main()
