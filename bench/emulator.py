"""Provider emulator processes (libs/imagegate/emulators) and their HTTP control API."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from typing import Any

from bench.context import Ctx, has_module
from bench.procs import Proc, loopback, python_module, spawn, wait_port

# Distinct pictures the bench's emulators render (each answer still differs: stamped seed).
BENCH_PICTURES = 32


def available(provider: str) -> bool:
    """Whether both the emulator and the adapter of `provider` exist in this tree."""
    return has_module(f"imagegate.emulators.{provider}") and has_module(
        f"services.{provider}.__main__"
    )


async def start_emulator(
    ctx: Ctx, provider: str, *, latency: float = 0.0, name: str | None = None, port: int = 0
) -> Proc:
    """`python -m imagegate.emulators <provider>` as its own process."""
    address = f"127.0.0.1:{port}" if port else loopback()
    proc = await spawn(
        name or f"{provider}-emulator",
        python_module(
            "imagegate.emulators",
            provider,
            "--port",
            address.rsplit(":", 1)[1],
            "--latency",
            str(latency),
            # Rendering a fresh PNG per answer cost ~3.6 ms of CPU per request, a quarter of this
            # machine on the hosted path: a real provider renders on its own machines.
            "--pictures",
            str(BENCH_PICTURES),
        ),
        env=dict(os.environ),
        address=address,
        log_dir=ctx.logs,
    )
    await wait_port(proc)
    return proc


def _post(url: str, body: dict[str, Any] | None, method: str = "POST") -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


async def set_fault(emu: Proc, kind: str | None) -> None:
    """Switches a fault on (until cleared) or clears it (kind None)."""
    url = f"http://{emu.address}/_emulator/faults"
    if kind is None:
        await asyncio.to_thread(_post, url, None, "DELETE")
    else:
        await asyncio.to_thread(_post, url, {"kind": kind})


def adapter_env(provider: str, emu: Proc) -> dict[str, str]:
    """Variables that enable `provider`'s adapter against the emulator, without a concurrency cap."""
    prefix = {"huggingface": "HF"}.get(provider, provider.upper())
    key_var = {
        "fal": "FAL_KEY",
        "huggingface": "HF_TOKEN",
        "replicate": "REPLICATE_API_TOKEN",
        "bfl": "BFL_API_KEY",
        "openai": "OPENAI_API_KEY",
        "together": "TOGETHER_API_KEY",
    }[provider]
    return {
        key_var: "bench-emulator-key",
        f"IMAGEGATE_{prefix}_BASE_URL": f"http://{emu.address}",
        f"IMAGEGATE_{prefix}_MAX_CONCURRENCY": "4096",
        # Queue providers: poll quickly so the emulated latency, not the poll step, is measured.
        f"IMAGEGATE_{prefix}_POLL_INTERVAL_SECONDS": "0.02",
        f"IMAGEGATE_{prefix}_MAX_POLL_INTERVAL_SECONDS": "0.05",
    }
