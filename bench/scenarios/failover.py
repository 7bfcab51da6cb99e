"""Scenario 3: the primary provider answers 503, then hangs, then refuses connections."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from bench.clients import channels, router_request
from bench.context import Ctx, Result, Target
from bench.emulator import adapter_env, available, set_fault, start_emulator
from bench.loadgen import error_name
from bench.procs import Proc
from bench.scenarios.common import note_deaths
from bench.stack import start_stack
from bench.stats import percentile
from imagegate.router.v1 import router_pb2, router_pb2_grpc

PRIMARY, SECONDARY = "fal", "together"
OPEN_SECONDS = 2.0
OPEN_SECONDS_SMOKE = 0.5
DEADLINE = 5.0
# Short enough that the hang phase stays quick, long enough for the secondary after it.
DEADLINE_SMOKE = 2.5
# Requests the primary serves before the fault, so its usual latency is known.
WARM_PRIMARY_CALLS = 5


@dataclass
class Outcome:
    """One sequential request."""

    start: float
    """perf_counter at send."""
    latency: float
    """Seconds."""
    provider: str
    """Who served it ("" on error)."""
    attempts: int
    """Attempts the Router reported."""
    error: str = ""
    """gRPC code name when it failed."""


class Client:
    """Sequential Router calls for flux-schnell restricted to the two emulated providers."""

    def __init__(self, address: str, api_key: str, deadline: float, admin_token: str) -> None:
        (self.channel,) = channels(address, 1)
        self.deadline = deadline
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.auth = (("authorization", f"Bearer {api_key}"),)
        # Latencies and error rates in GetProviderStatus are the operator's (a tenant key sees
        # only state and retry_at).
        self.admin = (("authorization", f"Bearer {admin_token}"),)
        self.n = 0

    async def one(self, providers: tuple[str, ...] = (PRIMARY, SECONDARY)) -> Outcome:
        """One request, timed."""
        self.n += 1
        req = router_request(self.n, model="flux-schnell", side=256, providers=providers)
        t0 = time.perf_counter()
        try:
            resp = await self.stub.GenerateImage(req, metadata=self.auth, timeout=self.deadline)
        except grpc.aio.AioRpcError as err:
            return Outcome(t0, time.perf_counter() - t0, "", 0, error_name(err))
        return Outcome(t0, time.perf_counter() - t0, resp.provider, len(resp.attempts))

    async def usual_p95(self) -> float | None:
        """The primary model's usual p95 latency as the Router reports it (seconds)."""
        resp = await self.stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=self.admin, timeout=5
        )
        for p in resp.providers:
            if p.provider == PRIMARY and p.provider_model and p.HasField("latency_p95"):
                return p.latency_p95.ToNanoseconds() / 1e9
        return None

    async def retry_at(self) -> float | None:
        """When the primary's breaker lets a probe through, as a perf_counter value."""
        resp = await self.stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=self.auth, timeout=5
        )
        for p in resp.providers:
            if p.provider == PRIMARY and p.HasField("retry_at"):
                wall = p.retry_at.seconds + p.retry_at.nanos / 1e9
                return time.perf_counter() + (wall - time.time())
        return None


async def run(ctx: Ctx) -> Result:
    """Three fault phases, each: baseline, first 20, steady state, recovery."""
    result = Result(
        "3. Failover",
        f"client -> Router -> {PRIMARY} adapter -> {PRIMARY} emulator (primary, faults injected) "
        f"and {SECONDARY} adapter -> {SECONDARY} emulator (secondary); sequential requests, "
        f"{DEADLINE_SMOKE if ctx.smoke else DEADLINE:g} s deadline, breaker first open wait "
        f"{OPEN_SECONDS_SMOKE if ctx.smoke else OPEN_SECONDS:g} s "
        "(IMAGEGATE_ROUTER_BREAKER_OPEN_SECONDS); a fresh stack per fault kind",
    )
    if not (available(PRIMARY) and available(SECONDARY)):
        result.notes.append(f"{PRIMARY}/{SECONDARY} adapters or emulators not landed: not run")
        result.targets.append(
            Target("Dead primary, first request", "<= 50 ms", "not measured", None)
        )
        return result
    phases: dict[str, dict[str, Any]] = {}
    for kind in ("error_503", "hang", "refused"):
        # A fresh stack per fault, so each phase sees the breaker's first trip and first wait.
        phases[kind] = await _isolated_phase(ctx, result, kind)
        result.runs.append({"label": f"primary {kind}", **_row(phases[kind])})
    result.extra["phases"] = phases
    for kind, ph in phases.items():
        result.extra[f"first 20 ms ({kind})"] = ph["first20_ms"]
    _judge(result, phases)
    return result


async def _isolated_phase(ctx: Ctx, result: Result, kind: str) -> dict[str, Any]:
    """Emulators and stack for one fault kind, torn down afterwards."""
    primary = await start_emulator(ctx, PRIMARY, name=f"{PRIMARY}-emulator-{kind}")
    secondary = await start_emulator(ctx, SECONDARY, name=f"{SECONDARY}-emulator-{kind}")
    env = {**adapter_env(PRIMARY, primary), **adapter_env(SECONDARY, secondary)}
    env["IMAGEGATE_ROUTER_BREAKER_OPEN_SECONDS"] = str(
        OPEN_SECONDS_SMOKE if ctx.smoke else OPEN_SECONDS
    )
    try:
        stack = await start_stack(ctx, f"failover-{kind}", extra=env)
    except BaseException:
        await primary.stop()
        await secondary.stop()
        raise
    client = Client(
        stack.services.address("router"),
        stack.api_key,
        DEADLINE_SMOKE if ctx.smoke else DEADLINE,
        ctx.admin_token,
    )
    try:
        primary, phase = await _phase(ctx, client, primary, kind)
    finally:
        note_deaths(result, list(stack.services.procs.values()))
        await client.channel.close()
        await stack.stop()
        await primary.stop()
        await secondary.stop()
    return phase


async def _phase(ctx: Ctx, client: Client, primary: Proc, kind: str) -> tuple[Proc, dict[str, Any]]:
    # Healthy first: the primary serves (a few times, so the Router knows its usual latency,
    # which hedging and the attempt bound start from) and its breaker is closed.
    served = 0
    for _ in range(50):
        served += (await client.one()).provider == PRIMARY
        if served >= WARM_PRIMARY_CALLS:
            break
    base = [await client.one((SECONDARY,)) for _ in range(ctx.n(60, 5))]
    base_p50 = percentile(sorted(o.latency for o in base if not o.error), 50)
    usual_p95 = await client.usual_p95()
    if kind == "refused":
        await primary.stop()
    else:
        await set_fault(primary, kind)
    first = [await client.one() for _ in range(20)]
    # Steady state alternates with secondary-only calls, so the difference is not machine noise.
    steady: list[Outcome] = []
    paired: list[Outcome] = []
    for _ in range(ctx.n(100, 8)):
        steady.append(await client.one())
        paired.append(await client.one((SECONDARY,)))
    # Recovery: the primary comes back; when does traffic return to it?
    if kind == "refused":
        port = int(primary.address.rsplit(":", 1)[1])
        primary = await start_emulator(ctx, PRIMARY, port=port, name=f"{PRIMARY}-emulator-back")
    else:
        await set_fault(primary, None)
    healed = time.perf_counter()
    retry_at = await client.retry_at()
    after: list[Outcome] = []
    returned: Outcome | None = None
    while time.perf_counter() - healed < 60:
        o = await client.one()
        after.append(o)
        if o.provider == PRIMARY:
            returned = o
            break
    door = max(healed, retry_at or healed)
    # One request: the one in flight when the wait ends may still go elsewhere.
    one_request = max([o.latency for o in after[-3:]] + [base_p50]) + 0.05
    phase: dict[str, Any] = {
        "baseline_secondary_only_p50_ms": round(base_p50 * 1000, 2),
        "first20_ms": [round(o.latency * 1000, 1) for o in first],
        "first20_served_by": [o.provider or o.error for o in first],
        "first20_attempts": [o.attempts for o in first],
        "first_request_cost_ms": round((first[0].latency - base_p50) * 1000, 2),
        "primary_usual_p95_ms": round(usual_p95 * 1000, 2) if usual_p95 is not None else None,
        # What hedging promises for a hanging primary: its usual p95 plus the secondary's time.
        "hedge_bound_ms": round(((usual_p95 or 0.0) + base_p50) * 1000, 2),
        "steady_p50_ms": _p(steady, 50),
        "steady_p99_ms": _p(steady, 99),
        "steady_secondary_only_p50_ms": _p(paired, 50),
        "steady_cost_p50_ms": round(_p(steady, 50) - _p(paired, 50), 3),
        "steady_errors": sum(1 for o in steady if o.error),
        "steady_served_by_primary": sum(1 for o in steady if o.provider == PRIMARY),
        "breaker_wait_left_at_heal_s": round(door - healed, 3),
        "return_after_heal_s": round(returned.start + returned.latency - healed, 3)
        if returned
        else None,
        "return_after_breaker_wait_s": round(returned.start + returned.latency - door, 3)
        if returned
        else None,
        "one_request_s": round(one_request, 3),
        "returned_within_wait_plus_one": bool(
            returned and returned.start + returned.latency - door <= one_request
        ),
    }
    return primary, phase


def _p(outcomes: list[Outcome], q: float) -> float:
    return round(percentile(sorted(o.latency for o in outcomes if not o.error), q) * 1000, 3)


def _row(phase: dict[str, Any]) -> dict[str, Any]:
    return {
        "first_ms": phase["first20_ms"][0],
        "first_cost_ms": phase["first_request_cost_ms"],
        "first20_max_ms": max(phase["first20_ms"]),
        "steady_p50_ms": phase["steady_p50_ms"],
        "steady_p99_ms": phase["steady_p99_ms"],
        "steady_secondary_only_p50_ms": phase["steady_secondary_only_p50_ms"],
        "steady_cost_ms": phase["steady_cost_p50_ms"],
        "baseline_ms": phase["baseline_secondary_only_p50_ms"],
        "return_after_wait_s": phase["return_after_breaker_wait_s"],
    }


def _judge(result: Result, phases: dict[str, dict[str, Any]]) -> None:
    for kind, label in (
        ("refused", "refusing connections"),
        ("error_503", "answering 503"),
        ("hang", "hanging"),
    ):
        ph = phases.get(kind)
        if ph is None:
            continue
        first = ph["first_request_cost_ms"]
        result.targets.append(
            Target(
                f"Primary {label}: first request cost",
                "<= 50 ms" if kind != "hang" else "(report)",
                f"{first:,.1f} ms over secondary-only {ph['baseline_secondary_only_p50_ms']} ms",
                first <= 50 if kind != "hang" else None,
            )
        )
        if kind == "hang":
            worst = max(ph["first20_ms"])
            result.targets.append(
                Target(
                    "Primary hanging: every request, hedged (issue 11)",
                    "<= primary's usual p95 + secondary's latency (+20 ms)",
                    f"worst of first 20 {worst:,.1f} ms; bound {ph['hedge_bound_ms']} ms "
                    f"(usual p95 {ph['primary_usual_p95_ms']} ms)",
                    worst <= ph["hedge_bound_ms"] + 20,
                )
            )
        result.targets.append(
            Target(
                f"Primary {label}: cost once breaker open",
                "<= 1 ms",
                f"{ph['steady_cost_p50_ms']:+.2f} ms p50 vs alternating secondary-only calls "
                f"({ph['steady_errors']} errors)",
                ph["steady_cost_p50_ms"] <= 1.0 and not ph["steady_errors"],
            )
        )
        result.targets.append(
            Target(
                f"Primary {label}: traffic returns",
                "within breaker wait + one request",
                f"{ph['return_after_heal_s']} s after heal, {ph['return_after_breaker_wait_s']} s "
                f"after the breaker wait ended (one request ~{ph['one_request_s']} s)",
                ph["returned_within_wait_plus_one"],
            )
        )
