"""Service processes for a run: spawn with logs to files, wait for health, read peak RSS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegate.devstack.services import ServiceSpec, free_port, plan_stack
from imagegate.devstack.supervisor import die_with_parent, prepare_die_with_parent

# Variables of the developer's shell that would change what the bench measures.
_SCRUB = (
    "FAL_KEY",
    "HF_TOKEN",
    "REPLICATE_API_TOKEN",
    "BFL_API_KEY",
    "OPENAI_API_KEY",
    "TOGETHER_API_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "QUOTA_DATABASE_URL",
    "METERING_DATABASE_URL",
)
_METRICS_KEYS = ("ROUTER", "QUOTA", "METERING", "LOCAL", "FAL", "HF", "REPLICATE", "BFL")
_METRICS_KEYS_MORE = ("OPENAI", "TOGETHER")


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus keys and exporters, pointed at `data_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        IMAGEGATE_DATA_DIR=str(data_dir),
        IMAGEGATE_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    for key in (*_METRICS_KEYS, *_METRICS_KEYS_MORE):
        # Scrape endpoints stay on (as deployed) but on free ports, so runs never clash.
        env[f"IMAGEGATE_{key}_METRICS_ADDR"] = "127.0.0.1:0"
    env.update(extra)
    return env


@dataclass
class Proc:
    """One child process."""

    name: str
    """Log and report name."""
    process: asyncio.subprocess.Process
    """The OS process."""
    address: str
    """host:port it listens on."""
    log_path: Path
    """Where its stdout and stderr go."""

    @property
    def pid(self) -> int:
        """OS process id."""
        return self.process.pid

    def reset_peak_rss(self) -> None:
        """Resets VmHWM so the next reading is the peak of what follows (Linux clear_refs 5)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float | None:
        """VmHWM of the process in MiB (None once it has exited)."""
        return _status_kb(self.pid, "VmHWM")

    def rss_mb(self) -> float | None:
        """VmRSS of the process in MiB."""
        return _status_kb(self.pid, "VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its live descendants (workers) used so far."""
        return sum(process_cpu_seconds(pid) for pid in descendants(self.pid))

    def tail(self, lines: int = 30) -> str:
        """Last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 8.0) -> None:
        """SIGTERM, then SIGKILL of its process group after `grace` seconds."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL now (a crashed dependency)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat (utime, stime); index 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (a Router's pre-forked workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _status_kb(pid: int, field_name: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class StartError(RuntimeError):
    """A process did not become ready."""


async def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    address: str,
    log_dir: Path,
    cwd: Path | None = None,
) -> Proc:
    """Starts `argv` in its own session with output to <log_dir>/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    prepare_die_with_parent()
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            # A killed benchmark must not leave its services running.
            preexec_fn=die_with_parent,
        )
    return Proc(name, process, address, log_path)


async def wait_healthy(proc: Proc, *, service: str = "", timeout: float = 60.0) -> None:
    """Polls the gRPC health service until SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.process.returncode is not None:
                raise StartError(f"{proc.name} exited ({proc.process.returncode}):\n{proc.tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise StartError(f"{proc.name} not healthy at {proc.address}:\n{proc.tail()}")
            await asyncio.sleep(0.05)


async def wait_port(proc: Proc, *, timeout: float = 30.0) -> None:
    """Waits until something accepts TCP connections on the process's address."""
    host, _, port = proc.address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        if proc.process.returncode is not None:
            raise StartError(f"{proc.name} exited ({proc.process.returncode}):\n{proc.tail()}")
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            if time.monotonic() > deadline:
                raise StartError(f"{proc.name} not listening on {proc.address}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


def python_module(module: str, *args: str) -> list[str]:
    """argv for `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def loopback() -> str:
    """A free loopback address."""
    return f"127.0.0.1:{free_port()}"


@dataclass
class Services:
    """The imagegate processes of one scenario (started in dependency order)."""

    env: dict[str, str]
    """Environment shared by every process (addresses filled in)."""
    procs: dict[str, Proc] = field(default_factory=dict)
    """Running processes by service name."""

    def address(self, name: str) -> str:
        """Where a service listens."""
        return self.procs[name].address

    async def stop(self) -> None:
        """Stops the Router first, then the rest."""
        for proc in reversed(list(self.procs.values())):
            await proc.stop()


async def start_services(
    env: Mapping[str, str], *, log_dir: Path, names: Sequence[str] | None = None
) -> Services:
    """Starts the stack plan_stack describes (core, adapters with keys, router) on free ports.

    `names` limits which services start (e.g. only "quota" for a store benchmark).
    """
    specs, full_env = plan_stack(env, auto_ports=True)
    chosen: list[ServiceSpec] = [s for s in specs if names is None or s.name in names]
    services = Services(full_env)
    try:
        for spec in chosen:
            proc = await spawn(
                spec.name,
                python_module(spec.module),
                env=full_env,
                address=full_env[spec.addr_var],
                log_dir=log_dir,
            )
            services.procs[spec.name] = proc
            await wait_healthy(proc, service=spec.health_service)
    except BaseException:
        await services.stop()
        raise
    return services


async def start_services_retrying(
    env: Mapping[str, str],
    *,
    log_dir: Path,
    names: Sequence[str] | None = None,
    attempts: int = 3,
) -> Services:
    """start_services, again on fresh ports when a port picked as free was taken meanwhile.

    Ports are chosen before the processes bind them; on a shared machine another process can
    take one in between.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await start_services(env, log_dir=log_dir, names=names)
        except StartError as err:
            if attempt == attempts or "bind" not in str(err).lower():
                raise
    raise AssertionError("unreachable")
