"""`python -m bench [--smoke] [--only NAMES] [--out DIR]`: run the scenarios and write the results."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench import report
from bench.context import Ctx, Result, cleanup, new_ctx
from bench.scenarios import capacity, failover, overhead, quota, tracing

TITLES = {
    "overhead": "1. Overhead",
    "capacity": "2. Slow provider capacity",
    "failover": "3. Failover",
    "quota": "4. Quota and metering",
    "tracing": "5. Tracing cost",
}
SCENARIOS: dict[str, Callable[[Ctx], Awaitable[Result]]] = {
    "overhead": overhead.run,
    "capacity": capacity.run,
    "failover": failover.run,
    "quota": quota.run,
    "tracing": tracing.run,
}


def machine() -> str:
    """CPU model and count, memory."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {model}, {platform.system()} {platform.release()}"


async def run(ctx: Ctx, names: list[str]) -> dict[str, Any]:
    """Runs the chosen scenarios in order; a failing scenario is recorded, the rest still run."""
    started = time.perf_counter()
    load_start = os.getloadavg()
    results: list[dict[str, Any]] = []
    for name in names:
        t0 = time.perf_counter()
        load_before = os.getloadavg()[0]
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            res = await SCENARIOS[name](ctx)
            doc = res.as_dict()
        except Exception as err:
            traceback.print_exc()
            doc = Result(TITLES[name], "n/a (the scenario failed)").as_dict()
            doc["error"] = f"{type(err).__name__}: {err}"
        doc["key"] = name
        doc["duration_s"] = round(time.perf_counter() - t0, 1)
        # Other work on the machine shows up here; it explains runs that differ.
        doc["loadavg_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
        print(f"bench: {name} done in {doc['duration_s']} s", file=sys.stderr, flush=True)
        results.append(doc)
    return {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "smoke": ctx.smoke,
            "machine": machine(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "duration_s": round(time.perf_counter() - started, 1),
            "loadavg_at_start": [round(x, 2) for x in load_start],
        },
        "scenarios": results,
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny numbers, seconds in total")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench/results)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (service logs, databases)"
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out = args.out or Path(__file__).resolve().parent / "results"
    ctx = new_ctx(args.smoke)
    try:
        doc = asyncio.run(run(ctx, names))
    finally:
        if args.keep:
            print(f"kept {ctx.work}", file=sys.stderr)
        else:
            cleanup(ctx)
    stem = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") + ("-smoke" if args.smoke else "")
    for path in report.write(doc, out, stem):
        print(path)


if __name__ == "__main__":
    main()
