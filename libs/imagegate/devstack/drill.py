"""`make drill`: the stack against provider emulators, the primary fails, every attempt printed."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from imagegate.devstack.bootstrap import ensure_admin_token, ensure_dev_key
from imagegate.devstack.supervisor import Stack, StackError
from imagegate.emulators.base import Emulator, Fault
from imagegate.emulators.fal import FalEmulator
from imagegate.emulators.together import TogetherEmulator
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.grpckit.security import transport_from_env
from imagegate.router.v1 import router_pb2, router_pb2_grpc

# Credentials the emulators accept; never real ones (the drill clears real keys from the env).
FAL_KEY = "drill-fal-id:drill-fal-secret"
TOGETHER_KEY = "tgp_v1_drill-together-secret"
PROVIDER_KEYS = (
    "FAL_KEY",
    "HF_TOKEN",
    "REPLICATE_API_TOKEN",
    "BFL_API_KEY",
    "OPENAI_API_KEY",
    "TOGETHER_API_KEY",
)
STATE = {
    router_pb2.BREAKER_STATE_CLOSED: "closed",
    router_pb2.BREAKER_STATE_OPEN: "OPEN",
    router_pb2.BREAKER_STATE_HALF_OPEN: "half-open",
}


@dataclass(frozen=True)
class Phase:
    """One step of the drill: a fault on the primary, then a few requests."""

    title: str
    """What the SRE is looking at."""
    fault: str | None
    """Fault kind set on the primary emulator (None clears faults)."""
    requests: int
    """Requests sent in this phase."""
    wait_before: float = 0.0
    """Seconds to wait first (lets an open breaker reach half-open)."""


@dataclass(frozen=True)
class DrillOptions:
    """Knobs of one drill run."""

    breaker_failures: int
    """Consecutive failures that open the primary's breaker."""
    breaker_open_seconds: float
    """First open wait of the breaker."""
    deadline: float
    """Caller deadline of each request, seconds."""
    model: str
    """Model alias requested (its first candidate is the primary)."""
    verbose: bool
    """Show the services' own log lines."""


def phases(options: DrillOptions) -> list[Phase]:
    """503s, then a hang, until the breaker opens; then recovery through a half-open probe."""
    n = options.breaker_failures
    return [
        # Three answers teach the Router the primary's usual latency (hedging starts from it).
        Phase("baseline: primary healthy", None, 3),
        Phase("primary answers HTTP 503", "error_503", max(1, n // 2)),
        Phase(
            "primary hangs (past its usual p95 the next candidate is started alongside)",
            "hang",
            n - n // 2,
        ),
        Phase("breaker open: the primary is skipped without a call", "hang", 2),
        Phase(
            "primary healthy again: half-open probe, then closed",
            None,
            2,
            wait_before=options.breaker_open_seconds + 0.5,
        ),
    ]


def drill_env(data_dir: Path, fal_url: str, together_url: str, options: DrillOptions) -> dict:
    """The stack's environment: emulators as providers, a small breaker, no real keys."""
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
    env.update(
        IMAGEGATE_DATA_DIR=str(data_dir),
        IMAGEGATE_LOG_FORMAT="text",
        IMAGEGATE_LOG_LEVEL=os.environ.get("IMAGEGATE_LOG_LEVEL", "WARNING"),
        PYTHONUNBUFFERED="1",
        FAL_KEY=FAL_KEY,
        IMAGEGATE_FAL_BASE_URL=fal_url,
        TOGETHER_API_KEY=TOGETHER_KEY,
        IMAGEGATE_TOGETHER_BASE_URL=together_url,
        IMAGEGATE_ROUTER_BREAKER_CONSECUTIVE_FAILURES=str(options.breaker_failures),
        IMAGEGATE_ROUTER_BREAKER_OPEN_SECONDS=str(options.breaker_open_seconds),
        IMAGEGATE_ROUTER_DESCRIBE_INTERVAL_SECONDS="2",
    )
    # A drill's processes must not collide with a running `make run`.
    for var in (
        "IMAGEGATE_ROUTER_METRICS_ADDR",
        "IMAGEGATE_QUOTA_METRICS_ADDR",
        "IMAGEGATE_METERING_METRICS_ADDR",
        "IMAGEGATE_LOCAL_METRICS_ADDR",
        "IMAGEGATE_FAL_METRICS_ADDR",
        "IMAGEGATE_TOGETHER_METRICS_ADDR",
    ):
        env.setdefault(var, "")
    return env


def _ms(duration: object) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1e6)  # type: ignore[attr-defined]


def format_attempts(attempts: Sequence[router_pb2.Attempt]) -> list[str]:
    """One line per attempt: number, provider/model, outcome, reason, latency."""
    lines = []
    for a in attempts:
        outcome = router_pb2.AttemptOutcome.Name(a.outcome).removeprefix("ATTEMPT_OUTCOME_")
        reason = f" {a.error_reason}" if a.error_reason else ""
        lines.append(
            f"      attempt {a.attempt_number}: {a.provider:<9} {a.provider_model:<34} "
            f"{outcome.lower():<12}{reason:<24} {_ms(a.latency):8.1f} ms"
        )
    return lines


async def send(
    stub: router_pb2_grpc.RouterServiceStub, api_key: str, index: int, options: DrillOptions
) -> list[str]:
    """One request through the Router; returns the lines to print."""
    request = router_pb2.GenerateImageRequest(
        request_id=f"drill-{os.getpid()}-{index}",
        prompt="isometric treasure chest, game asset",
        model=options.model,
        width=512,
        height=512,
        num_images=1,
    )
    started = time.perf_counter()
    call = stub.GenerateImage(
        request, metadata=[("authorization", f"Bearer {api_key}")], timeout=options.deadline
    )
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        elapsed = (time.perf_counter() - started) * 1000
        parsed = parse_rpc_error(err)
        trailing = dict(await call.trailing_metadata() or ())
        trace_id = str(trailing.get("x-imagegate-trace-id", "")) or parsed.metadata.get(
            "trace_id", "?"
        )
        return [
            f"  #{index:<2} trace {trace_id}  FAILED {err.code().name} {parsed.reason} "
            f"in {elapsed:.0f} ms: {err.details()}"
        ]
    elapsed = (time.perf_counter() - started) * 1000
    trailing = dict(await call.trailing_metadata() or ())
    overhead = trailing.get("x-imagegate-overhead-ms", "?")
    head = (
        f"  #{index:<2} trace {response.trace_id}  served by {response.provider} "
        f"in {elapsed:.0f} ms ({len(response.attempts)} attempt"
        f"{'s' if len(response.attempts) != 1 else ''}, router overhead {overhead} ms, "
        f"cost {response.cost_micros} µUSD)"
    )
    return [head, *format_attempts(response.attempts)]


async def breaker_lines(stub: router_pb2_grpc.RouterServiceStub, api_key: str) -> list[str]:
    """The breakers of the providers the drill uses."""
    status = await stub.GetProviderStatus(
        router_pb2.GetProviderStatusRequest(),
        metadata=[("authorization", f"Bearer {api_key}")],
        timeout=5,
    )
    lines = []
    for p in status.providers:
        if p.provider not in ("fal", "together"):
            continue
        retry = ""
        if p.state == router_pb2.BREAKER_STATE_OPEN and p.HasField("retry_at"):
            retry = (
                f", half-open in {max(0.0, p.retry_at.ToDatetime().timestamp() - time.time()):.1f}s"
            )
        last = f", last error {p.last_error_reason}" if p.last_error_reason else ""
        lines.append(
            f"    breaker {p.provider}/{p.provider_model or '*'}: {STATE.get(p.state, '?')} "
            f"(error rate {p.error_rate:.0%} over {p.window_calls} calls, trips {p.trips}"
            f"{last}{retry})"
        )
    return lines


async def run_drill(options: DrillOptions, data_dir: Path) -> int:
    """Starts emulators and the stack, runs the phases, prints, stops everything."""
    fal: Emulator = FalEmulator(key=FAL_KEY)
    together: Emulator = TogetherEmulator(key=TOGETHER_KEY)
    fal_url, together_url = await fal.start(), await together.start()
    env = drill_env(data_dir, fal_url, together_url, options)
    admin_token = ensure_admin_token(data_dir, env)
    stack = Stack(env, auto_ports=True, out=sys.stdout if options.verbose else None)
    print(f"starting the stack (fal emulator {fal_url} primary, together {together_url})…")
    try:
        await stack.start(timeout=60)
        key_file, _ = await ensure_dev_key(
            data_dir, stack.address("quota"), admin_token, transport=transport_from_env(stack.env)
        )
        api_key = key_file.read_text().strip()
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        print(
            f"router {stack.address('router')}, dev tenant key in {key_file}\n"
            + (
                f"traces exported to {otlp}: open http://localhost:16686/trace/<trace id>\n"
                if otlp
                else "traces are not exported (set OTEL_EXPORTER_OTLP_ENDPOINT, e.g. "
                "http://localhost:4317 with `make up`, to see them in Jaeger)\n"
            )
        )
        async with create_channel(stack.address("router")) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            index = 0
            for phase in phases(options):
                if phase.wait_before:
                    print(f"  … waiting {phase.wait_before:.1f}s for the breaker's open period")
                    await asyncio.sleep(phase.wait_before)
                if phase.fault is None:
                    fal.faults.clear()
                else:
                    fal.faults.set(Fault(phase.fault))
                print(f"== {phase.title}")
                for _ in range(phase.requests):
                    index += 1
                    for line in await send(stub, api_key, index, options):
                        print(line, flush=True)
                for line in await breaker_lines(stub, api_key):
                    print(line)
                print()
        print(f"fal emulator saw {len(fal.calls)} HTTP calls, together {len(together.calls)}.")
        return 0
    except StackError as err:
        print(f"drill: {err}", file=sys.stderr)
        return 1
    finally:
        await stack.stop()
        await fal.stop()
        await together.stop()


def parse_args(argv: Sequence[str]) -> DrillOptions:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m imagegate.devstack.drill", description=__doc__)
    parser.add_argument(
        "--breaker-failures", type=int, default=4, help="consecutive failures to trip"
    )
    parser.add_argument("--breaker-open-seconds", type=float, default=3.0, help="first open wait")
    parser.add_argument("--deadline", type=float, default=5.0, help="caller deadline, seconds")
    parser.add_argument(
        "--model", default="flux-schnell", help="alias whose first candidate is fal"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show service logs")
    a = parser.parse_args(argv)
    return DrillOptions(a.breaker_failures, a.breaker_open_seconds, a.deadline, a.model, a.verbose)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `make drill`."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="imagegate-drill-") as tmp:
        sys.exit(asyncio.run(run_drill(options, Path(tmp))))


if __name__ == "__main__":
    main()
