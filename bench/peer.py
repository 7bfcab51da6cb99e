"""`python -m bench.peer` (make bench-peer): imagegate against LiteLLM's proxy, one emulator, one core.

Both gateways serve OpenAI's gpt-image-1-mini from the same OpenAI emulator process
(`python -m imagegate.emulators openai`, 1024x1024 PNG in base64). Every process of a gateway
is pinned to core 0 with `taskset`; the emulator and this load generator run on the other
cores. Cells, each driven in alternation (LiteLLM, imagegate, direct, LiteLLM, ...):

- serial, 0 ms provider: p50/p99 of each gateway minus a direct HTTP call to the emulator;
- 64 in flight, 0 ms provider: req/s, p99, CPU per request over the gateway's processes;
- 256 in flight, 500 ms provider: req/s, p99, errors.

LiteLLM's proxy runs from its own virtualenv (bench/.peer-venv, made by `make bench-peer`,
version pinned in the Makefile) with one worker. Results: bench/results/peer-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.clients import channels
from bench.context import Ctx, cleanup, new_ctx
from bench.emulator import adapter_env, start_emulator
from bench.loadgen import Call
from bench.procs import Proc, descendants, loopback, process_cpu_seconds, spawn
from bench.scenarios.common import interleaved
from bench.stack import BenchStack, start_stack
from bench.stats import RunStats
from imagegate.common.v1 import image_pb2
from imagegate.router.v1 import router_pb2, router_pb2_grpc

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".peer-venv"
MODEL = "gpt-image-1-mini"
SIZE = 1024
KEY = "bench-emulator-key"
PEER_KEY = "sk-bench-" + uuid.uuid4().hex
GATEWAY_CORE = "0"


@dataclass
class Tree:
    """A process and its descendants, as one CPU account (LiteLLM may fork its server)."""

    name: str
    pid: int

    def cpu_seconds(self) -> float:
        """utime+stime of the process and every live descendant."""
        return sum(process_cpu_seconds(pid) for pid in descendants(self.pid))


def pin(pids: list[int], cores: str) -> None:
    """Pins every thread of every process in `pids` to `cores` (taskset -a -p -c)."""
    for pid in pids:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cores, str(pid)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def other_cores() -> str:
    """Every core but the gateways' one (the load generator and the emulator run there)."""
    cores = sorted(os.sched_getaffinity(0))
    rest = [c for c in cores if str(c) != GATEWAY_CORE] or cores
    return ",".join(str(c) for c in rest)


async def start_litellm(ctx: Ctx, emu: Proc) -> Proc:
    """LiteLLM's proxy, one worker, gpt-image-1-mini routed to the emulator, no database."""
    config = ctx.work / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"http://{emu.address}/v1",
                            "api_key": KEY,
                        },
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
            }
        )
    )
    address = loopback()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHONPATH", "VIRTUAL"))
    }
    # A master key: the proxy refuses to start without one (and imagegate checks keys too).
    env.update(
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        LITELLM_MASTER_KEY=PEER_KEY,
    )
    proc = await spawn(
        "litellm",
        [
            str(PEER_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            address.rsplit(":", 1)[1],
            "--num_workers",
            "1",
        ],
        env=env,
        address=address,
        log_dir=ctx.logs,
    )
    deadline = time.monotonic() + 180
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://{address}/health/liveliness") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            if proc.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LiteLLM proxy did not start:\n{proc.tail()}")
            await asyncio.sleep(0.5)


def http_call(session: aiohttp.ClientSession, url: str, *, key: str) -> Call:
    """POST /v1/images/generations (OpenAI's shape) and check an image came back."""
    body = {"model": MODEL, "prompt": "isometric treasure chest, game asset", "size": "1024x1024"}
    headers = {"authorization": f"Bearer {key}"}

    async def call(n: int) -> float | None:
        async with session.post(url, json=body, headers=headers) as resp:
            payload = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
        if not json.loads(payload)["data"][0]["b64_json"]:
            raise RuntimeError("no image")
        return None

    return call


def imagegate_call(stack: BenchStack, chans: list[Any]) -> Call:
    """GenerateImage through the Router, restricted to the OpenAI adapter."""
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in chans]
    auth = (("authorization", f"Bearer {stack.api_key}"),)

    async def call(n: int) -> float | None:
        req = router_pb2.GenerateImageRequest(
            request_id=f"peer-{uuid.uuid4().hex}",
            prompt="isometric treasure chest, game asset",
            model=MODEL,
            width=SIZE,
            height=SIZE,
            output_format=image_pb2.IMAGE_FORMAT_PNG,
            allowed_providers=["openai"],
        )
        resp = await stubs[n % len(stubs)].GenerateImage(req, metadata=auth, timeout=30)
        if not resp.images:
            raise RuntimeError("no image")
        return None

    return call


async def set_latency(emu: Proc, seconds: float) -> None:
    """The emulator's latency, through its control API."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{emu.address}/_emulator/latency", json={"seconds": seconds}) as resp,
    ):
        resp.raise_for_status()


def _row(s: RunStats) -> dict[str, Any]:
    return {
        "requests": s.requests,
        "ok": s.ok,
        "errors": dict(s.errors),
        "rps": round(s.rps, 1),
        "p50_ms": round(s.pct_ms(50), 2),
        "p99_ms": round(s.pct_ms(99), 2),
        "cpu_ms_per_req": round(1000 * sum(s.cpu_seconds.values()) / max(1, s.ok), 2),
    }


async def run(ctx: Ctx, quick: bool) -> dict[str, Any]:
    """Starts the emulator and both gateways, pins them, runs the three cells."""
    emu = await start_emulator(ctx, "openai", latency=0.0)
    stack = await start_stack(ctx, "peer", extra=adapter_env("openai", emu))
    litellm = await start_litellm(ctx, emu)
    gateway_procs = list(stack.services.procs.values())
    pin([pid for p in gateway_procs for pid in descendants(p.pid)], GATEWAY_CORE)
    pin(descendants(litellm.pid), GATEWAY_CORE)
    rest = other_cores()
    pin([emu.pid, os.getpid()], rest)
    ig_account: list[Any] = gateway_procs
    lt_account: list[Any] = [Tree("litellm", litellm.pid)]
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_start": os.getloadavg()[0],
        "gateway_core": GATEWAY_CORE,
        "other_cores": rest,
        "cells": {},
    }
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        chans = channels(stack.services.address("router"), 4)
        paths = {
            "litellm": http_call(
                session, f"http://{litellm.address}/v1/images/generations", key=PEER_KEY
            ),
            "imagegate": imagegate_call(stack, chans),
            "direct": http_call(session, f"http://{emu.address}/v1/images/generations", key=KEY),
        }
        cpu = {"litellm": lt_account, "imagegate": ig_account}
        scale = 0.25 if quick else 1.0
        cells = [
            ("serial, 0 ms provider", 1, 0.0, int(600 * scale), 4, paths),
            (
                "64 in flight, 0 ms provider",
                64,
                0.0,
                int(3000 * scale),
                2,
                {k: v for k, v in paths.items() if k != "direct"},
            ),
            (
                "256 in flight, 500 ms provider",
                256,
                0.5,
                int(6000 * scale),
                2,
                {k: v for k, v in paths.items() if k != "direct"},
            ),
        ]
        for name, concurrency, latency, requests, rounds, cell_paths in cells:
            await set_latency(emu, latency)
            stats = await interleaved(
                cell_paths,
                concurrency=concurrency,
                requests=requests,
                rounds=rounds,
                warmup=max(20, concurrency),
                duration=20.0 * scale if latency else None,
                cpu=cpu,
            )
            out["cells"][name] = {label: _row(s) for label, s in stats.items()}
            print(f"{name}: " + json.dumps(out["cells"][name]), flush=True)
        for ch in chans:
            await ch.close()
    out["load_average_end"] = os.getloadavg()[0]
    await litellm.stop()
    await stack.stop()
    await emu.stop()
    return out


def table(result: dict[str, Any]) -> str:
    """The ratio table, as Markdown."""
    cells = result["cells"]
    lines = [
        f"imagegate vs LiteLLM proxy, {result['date']} (load average "
        f"{result['load_average_start']:.1f} -> {result['load_average_end']:.1f}); each gateway"
        f" on core {result['gateway_core']}, emulator and client on {result['other_cores']}.",
        "",
        "| cell | LiteLLM | imagegate | imagegate / LiteLLM |",
        "|---|---|---|---|",
    ]
    serial = cells.get("serial, 0 ms provider")
    if serial:
        d, lt, ig = serial["direct"], serial["litellm"], serial["imagegate"]
        for q in ("p50_ms", "p99_ms"):
            a, b = lt[q] - d[q], ig[q] - d[q]
            lines.append(
                f"| serial added latency {q[:3]} (minus direct {d[q]:.2f} ms) | +{a:.2f} ms "
                f"| +{b:.2f} ms | {b / a if a else float('nan'):.2f} |"
            )
        lines.append(
            f"| serial CPU per request | {lt['cpu_ms_per_req']:.2f} ms | "
            f"{ig['cpu_ms_per_req']:.2f} ms | {ig['cpu_ms_per_req'] / lt['cpu_ms_per_req']:.2f} |"
        )
    for name in ("64 in flight, 0 ms provider", "256 in flight, 500 ms provider"):
        cell = cells.get(name)
        if not cell:
            continue
        lt, ig = cell["litellm"], cell["imagegate"]
        lines.append(
            f"| {name}: req/s | {lt['rps']:.0f} | {ig['rps']:.0f} | {ig['rps'] / lt['rps']:.2f} |"
        )
        lines.append(
            f"| {name}: p99 | {lt['p99_ms'] / 1000:.2f} s | {ig['p99_ms'] / 1000:.2f} s | "
            f"{ig['p99_ms'] / lt['p99_ms']:.2f} |"
        )
        lines.append(
            f"| {name}: CPU per request | {lt['cpu_ms_per_req']:.2f} ms | "
            f"{ig['cpu_ms_per_req']:.2f} ms | {ig['cpu_ms_per_req'] / lt['cpu_ms_per_req']:.2f} |"
        )
        lines.append(f"| {name}: errors | {lt['errors'] or 0} | {ig['errors'] or 0} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (PEER_VENV / "bin" / "litellm").exists():
        raise SystemExit(f"no LiteLLM proxy in {PEER_VENV}: run `make bench-peer`")
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin each gateway to one core")
    ctx = new_ctx(smoke=False)
    try:
        result = asyncio.run(run(ctx, args.quick))
    finally:
        cleanup(ctx)
    text = table(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"peer-{result['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
