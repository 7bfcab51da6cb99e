"""Starts the stack's processes, waits for each to be healthy, prefixes logs, stops them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegate.devstack.services import ServiceSpec, plan_stack
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import transport_from_env

_COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92")


@dataclass
class Child:
    """A running service process."""

    spec: ServiceSpec
    """What it is."""
    address: str
    """Where it listens."""
    process: asyncio.subprocess.Process
    """The OS process."""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    """Its last output lines, shown when it dies during start-up."""


class StackError(RuntimeError):
    """A service failed to start."""


class Stack:
    """The whole local stack as child processes."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        auto_ports: bool = False,
        out: TextIO | None = sys.stdout,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.specs, self.env = plan_stack(env, auto_ports=auto_ports)
        self._out = out
        self._python = python
        self._cwd = cwd
        self.children: dict[str, Child] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self._width = max(len(s.name) for s in self.specs)

    def address(self, name: str) -> str:
        """Listen address of a service."""
        spec = next(s for s in self.specs if s.name == name)
        return self.env[spec.addr_var]

    async def start(self, *, timeout: float = 60.0) -> None:
        """Starts the backends together, then the Router once they all report SERVING."""
        first, last = self.specs[:-1], self.specs[-1:]
        for wave in (first, last):
            for spec in wave:
                await self._spawn(spec, _COLOURS[self.specs.index(spec) % len(_COLOURS)])
            await asyncio.gather(
                *(self._wait_healthy(self.children[s.name], timeout) for s in wave)
            )

    async def _spawn(self, spec: ServiceSpec, colour: str) -> None:
        prepare_die_with_parent()
        proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            spec.module,
            env=self.env,
            cwd=self._cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        child = Child(spec, self.env[spec.addr_var], proc)
        self.children[spec.name] = child
        self._pumps.append(asyncio.create_task(self._pump(child, colour)))

    async def _pump(self, child: Child, colour: str) -> None:
        assert child.process.stdout is not None
        prefix = child.spec.name.ljust(self._width)
        tty = self._out is not None and self._out.isatty()
        while line := await child.process.stdout.readline():
            text = _humanize(line.decode(errors="replace").rstrip())
            child.tail.append(text)
            if self._out is not None:
                label = f"\x1b[{colour}m{prefix} |\x1b[0m" if tty else f"{prefix} |"
                print(f"{label} {text}", file=self._out, flush=True)

    async def _wait_healthy(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Under mTLS the supervisor shows the `admin` certificate, as the CLI does.
        credentials = transport_from_env(self.env, "admin").channel_credentials()
        async with create_channel(child.address, credentials=credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if child.process.returncode is not None:
                    raise StackError(self._died(child))
                try:
                    resp = await stub.Check(
                        health_pb2.HealthCheckRequest(service=child.spec.health_service),
                        timeout=1.0,
                    )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{child.spec.name} did not become healthy at {child.address} "
                        f"within {timeout:.0f}s\n" + "\n".join(child.tail)
                    )
                await asyncio.sleep(0.1)

    def _died(self, child: Child) -> str:
        code = child.process.returncode
        return f"{child.spec.name} exited with code {code} during start-up:\n" + "\n".join(
            child.tail
        )

    async def kill(self, name: str) -> None:
        """SIGKILLs one service (failure drills and tests): no graceful stop, no flush."""
        child = self.children[name]
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        await child.process.wait()

    async def respawn(self, name: str, *, timeout: float = 60.0) -> None:
        """Starts a stopped service again on the same address and waits until it is healthy."""
        spec = self.children[name].spec
        await self._spawn(spec, _COLOURS[self.specs.index(spec) % len(_COLOURS)])
        await self._wait_healthy(self.children[name], timeout)

    async def wait_any_exit(self) -> Child:
        """Returns the first child that exits."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children.values()}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[next(iter(done))]

    async def stop(self, grace: float = 8.0) -> None:
        """SIGTERM in reverse start order (router first), then SIGKILL after `grace`."""
        for child in reversed(list(self.children.values())):
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        for child in reversed(list(self.children.values())):
            try:
                await asyncio.wait_for(child.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                await child.process.wait()
        for pump in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(pump, 2.0)


def prepare_die_with_parent() -> None:
    """Looks prctl up in the parent, before any fork that will use `die_with_parent`."""
    _prctl()


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the parent: the child must not import anything after fork."""
    if sys.platform != "linux":
        return None
    import ctypes

    return ctypes.CDLL("libc.so.6", use_errno=True).prctl  # type: ignore[no-any-return]


def die_with_parent() -> None:
    """Asks Linux to SIGTERM the child when the supervisor dies, so no service is orphaned."""
    prctl = _prctl()
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _humanize(line: str) -> str:
    """Renders a JSON log line compactly for the terminal; other lines pass through."""
    if not line.startswith("{"):
        return line
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    skip = {"ts", "level", "service", "logger", "msg", "span_id"}
    extras = " ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
    return f"{rec.get('level', '').upper():5} {rec.get('msg', '')} {extras}".rstrip()
