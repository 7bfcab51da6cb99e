"""Opt-in pre-forked Router workers: N processes on one port (SO_REUSEPORT), each its own replica.

Every piece of state a Router process keeps for itself (breakers, auth cache, price mirror,
in-memory results, the settlement outbox) is already per replica and safe as such
(docs/replicas-and-state.md), so a worker is a replica that happens to share the host and port:
it gets the replica id `<replica id>-w<i>` (its quota claims' prefix, released when worker i
starts again), its own outbox `router-outbox-w<i>.sqlite3`, and its Prometheus port shifted by i.
The supervisor only starts, restarts and stops them; the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from imagegate.devstack.supervisor import die_with_parent, prepare_die_with_parent
from services.router.config import RouterSettings
from services.router.reservation import default_replica_id

log = logging.getLogger("services.router")

# A worker that dies is started again after this pause (a crash loop stays slow).
RESTART_PAUSE_SECONDS = 1.0


def worker_settings(settings: RouterSettings) -> RouterSettings:
    """The settings a worker runs with: its own replica id."""
    if settings.worker_index is None:
        return settings
    base = settings.replica_id or default_replica_id(settings.data_dir)
    return settings.model_copy(update={"replica_id": f"{base}-w{settings.worker_index}"})


def outbox_name(settings: RouterSettings) -> str:
    """The settlement outbox file of this process."""
    if settings.worker_index is None:
        return "router-outbox.sqlite3"
    return f"router-outbox-w{settings.worker_index}.sqlite3"


def shifted(address: str, index: int) -> str:
    """host:port with the port moved up by `index` ("" and port 0 stay as they are)."""
    if not address:
        return address
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return address
    return f"{host}:{int(port) + index}"


async def supervise(settings: RouterSettings, metrics_addr: str) -> None:
    """Runs `settings.workers` workers until SIGINT/SIGTERM, restarting any that dies."""
    if settings.addr.rpartition(":")[2] in ("", "0"):
        raise SystemExit("IMAGEGATE_ROUTER_WORKERS > 1 needs a fixed port in IMAGEGATE_ROUTER_ADDR")
    prepare_die_with_parent()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    async def start(index: int) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["IMAGEGATE_ROUTER_WORKER_INDEX"] = str(index)
        env["IMAGEGATE_ROUTER_METRICS_ADDR"] = shifted(metrics_addr, index)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.router", env=env, preexec_fn=die_with_parent
        )

    procs = {i: await start(i) for i in range(settings.workers)}
    log.info(
        "router workers started",
        extra={"workers": settings.workers, "address": settings.addr},
    )
    stop_wait = asyncio.ensure_future(stopping.wait())
    while not stopping.is_set():
        exits = {asyncio.ensure_future(p.wait()): i for i, p in procs.items()}
        done, _ = await asyncio.wait({stop_wait, *exits}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in exits:
            waiter.cancel()
        if stopping.is_set():
            break
        for waiter in done:
            index = exits[waiter]
            log.warning(
                "router worker exited; starting it again",
                extra={"worker": index, "returncode": procs[index].returncode},
            )
            await asyncio.sleep(RESTART_PAUSE_SECONDS)
            procs[index] = await start(index)
    for proc in procs.values():
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    grace = settings.shutdown_grace_seconds + 5.0
    for proc in procs.values():
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
