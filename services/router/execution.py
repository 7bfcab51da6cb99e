"""Execution: call the planned candidates in order within the deadline, failing over.

Owns the per-attempt decisions: the deadline split between an attempt and its followers,
breaker permits and accounting, the last-resort probe when every circuit is open, the failover
budget, and how an adapter's answer is classified.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from imagegate.grpckit import reasons
from imagegate.provider.v1 import provider_pb2
from imagegate.router.v1 import router_pb2
from services.router.attempt import MIN_USEFUL_ATTEMPT, AttemptCaller
from services.router.breaker import CircuitBreaker, Permit
from services.router.catalog import Candidate
from services.router.events import duration
from services.router.job import Job
from services.router.outcomes import AttemptResult
from services.router.planning import RoutePlan, Skip
from services.router.throttle import RetryThrottle

# A model's p95 is trusted for hedging after this many successful calls.
HEDGE_MIN_SAMPLES = 3


@dataclass
class _RunState:
    """The attempts of one run: candidates left, attempts running, hedge and probe state."""

    queue: list[Candidate]
    running: dict[asyncio.Task[AttemptResult], Candidate] = field(default_factory=dict)
    started_at: dict[asyncio.Task[AttemptResult], float] = field(default_factory=dict)
    numbers: dict[asyncio.Task[AttemptResult], int] = field(default_factory=dict)
    forced: bool = False
    hedged: asyncio.Task[AttemptResult] | None = None
    """The attempt a hedge was started against (past its usual p95)."""
    hedge_refused: bool = False

    def running_candidate(self) -> Candidate | None:
        """The candidate of an attempt still running, if any."""
        return next(iter(self.running.values()), None)


@dataclass
class Execution:
    """How the attempts ended: a winner, or the attempt that stopped failover (or neither)."""

    winner: tuple[Candidate, provider_pb2.GenerateImageResponse] | None = None
    """The candidate that produced the images and the adapter's answer."""
    stop: AttemptResult | None = None
    """The attempt whose failure ended the request early (no failover allowed)."""


class Executor:
    """Runs a job's attempts; never settles, never raises for a failed attempt."""

    def __init__(self, caller: AttemptCaller) -> None:
        self.caller = caller
        self.settings, self.catalog = caller.settings, caller.catalog
        self.breakers, self.clock = caller.breakers, caller.clock
        self.throttle = RetryThrottle(
            self.settings.failover_max_tokens, self.settings.failover_token_ratio
        )

    async def run(self, job: Job) -> Execution:
        """Tries the plan's candidates in order until one succeeds or failover must stop.

        Hedging: while the one attempt running is past its model's usual p95 and a healthy
        follower exists, the follower starts too; the first success wins and the other is
        cancelled (and recorded as an attempt the provider may bill).
        """
        plan, events = job.plan, job.events
        if events is not None:
            events.emit(
                accepted=router_pb2.Accepted(
                    request_id=job.admitted.request_id,
                    candidates=[c.key for c in plan.candidates],
                    trace_id=job.trace_id,
                )
            )
        state = _RunState(queue=list(plan.candidates))
        try:
            while True:
                if not state.running and not self._start_next(job, state):
                    return Execution()  # every candidate tried or skipped
                delay = self._hedge_delay(state)
                waited = time.perf_counter()
                try:
                    done, _ = await asyncio.wait(
                        state.running, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    # Wall time with attempts running (hedges overlap): the rest is overhead.
                    job.log.adapter_seconds += time.perf_counter() - waited
                if not done:
                    if not self._start_next(job, state, hedge=True):
                        state.hedge_refused = True
                    continue
                for task in done:
                    cand = state.running.pop(task)
                    verdict = self._judge(job, state, cand, task.result())
                    if verdict is not None:
                        return verdict
        finally:
            await self._cancel_losers(job, state)

    def _judge(
        self, job: Job, state: _RunState, cand: Candidate, result: AttemptResult
    ) -> Execution | None:
        """What one finished attempt means for the request: done, stop, or go on."""
        if result.outcome == router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            assert result.response is not None
            self.throttle.on_success()
            return Execution(winner=(cand, result.response))
        if not result.failover or (
            result.outcome == router_pb2.ATTEMPT_OUTCOME_MODERATED
            and not job.admitted.norm.request.allow_moderation_failover
        ):
            return Execution(stop=result)
        if result.scope and not self.throttle.on_failure() and state.queue and not state.running:
            # Most attempts are failing everywhere: stop multiplying load on the fleet.
            job.plan.notices.append("failover budget exhausted")
            result.message += " (failover budget exhausted; not trying further providers)"
            return Execution(stop=result)
        nxt = state.running_candidate() or (state.queue[0] if state.queue else None)
        if nxt is not None:
            attrs = {"from": cand.key, "to": nxt.key, "reason": result.reason}
            job.span.add_event("failover", attrs)
            if job.events is not None:
                job.events.emit(
                    failover=router_pb2.Failover(
                        from_provider=cand.provider, to_provider=nxt.provider, reason=result.reason
                    )
                )
        return None

    def _start_next(self, job: Job, state: _RunState, *, hedge: bool = False) -> bool:
        """Starts the next candidate that has time and a closed circuit; False when none is left.

        A hedge takes only a follower that is healthy now (never the last-resort probe).
        """
        plan, deadline = job.plan, job.admitted.deadline
        margin = self.settings.settle_margin_seconds
        while state.queue:
            cand = state.queue[0]
            avail = deadline.remaining() - margin
            pb = self.breakers.get(cand.provider)
            mb = self.breakers.get(cand.provider, cand.provider_model)
            if hedge and (pb.retry_at is not None or mb.retry_at is not None):
                return False
            state.queue.pop(0)
            observed = mb.latency_quantile(0.5, min_samples=5)
            if avail < MIN_USEFUL_ATTEMPT or (observed is not None and observed > avail):
                self._skip(job, Skip(cand, "deadline", _too_little_time(avail, observed)))
                continue
            permits = self._acquire(pb, mb, force=state.forced and not state.queue)
            if permits is None:
                retry = [b.retry_at for b in (pb, mb) if b.retry_at is not None]
                self._skip(
                    job,
                    Skip(
                        cand,
                        "breaker",
                        f"circuit open ({pb.name if pb.retry_at else mb.name})",
                        retry_at=max(retry) if retry else None,
                    ),
                )
                if not state.queue and not job.log.attempts and not state.forced:
                    last = self._last_resort(plan)
                    if last is not None:
                        state.forced = True
                        state.queue.append(last)
                        plan.notices.append(
                            f"every candidate's circuit was open; sent one probe to {last.key}"
                        )
                continue
            budget = self._budget(cand, state.queue, avail)
            if hedge:
                # A hedge spends failover budget, as gRPC's hedging does: a fleet that is slow
                # everywhere is not sent twice the load.
                self.throttle.on_failure()
                job.span.add_event("hedge", {"to": cand.key})
                plan.notices.append(
                    f"{state.running_candidate().key} was slower than usual; "  # type: ignore[union-attr]
                    f"{cand.key} was started alongside it"
                )
            number = job.log.next_number()
            task = asyncio.create_task(self.caller.call(job, cand, permits, budget, number))
            if hedge:
                state.hedged = next(iter(state.running))
            state.running[task] = cand
            state.started_at[task] = self.clock()
            state.numbers[task] = number
            return True
        return False

    def _skip(self, job: Job, skip: Skip) -> None:
        """Notes a candidate passed over, and tells a streaming caller at once."""
        job.plan.skipped.append(skip)
        if job.events is None:
            return
        event = router_pb2.CandidateSkipped(
            provider=skip.candidate.provider,
            provider_model=skip.candidate.provider_model,
            kind=skip.kind,
            detail=skip.text,
        )
        if skip.retry_at is not None:
            wall = time.time() + (skip.retry_at - self.clock())
            event.retry_at.FromNanoseconds(int(wall * 1e9))
        job.events.emit(skipped=event)

    def _hedge_delay(self, state: _RunState) -> float | None:
        """Seconds until the one running attempt passes its usual p95, if a hedge may follow."""
        if not self.settings.hedge or state.hedged or state.hedge_refused:
            return None
        if len(state.running) != 1:
            return None
        follower = state.queue[0] if state.queue else None
        if follower is None or not self.throttle.allowed():
            return None
        if any(
            b.retry_at is not None
            for b in (
                self.breakers.get(follower.provider),
                self.breakers.get(follower.provider, follower.provider_model),
            )
        ):
            return None
        ((task, cand),) = state.running.items()
        usual = self.breakers.get(cand.provider, cand.provider_model).latency_quantile(
            0.95, min_samples=HEDGE_MIN_SAMPLES
        )
        if usual is None:
            return None
        wait = max(self.settings.hedge_min_delay_seconds, usual)
        return max(0.0, state.started_at[task] + wait - self.clock())

    async def _cancel_losers(self, job: Job, state: _RunState) -> None:
        """Cancels attempts still running (a hedge lost, or the caller left) and records them."""
        if not state.running:
            return
        for task in state.running:
            task.cancel()
        await asyncio.gather(*state.running, return_exceptions=True)
        for task, cand in state.running.items():
            elapsed = self.clock() - state.started_at[task]
            attempt = router_pb2.Attempt(
                provider=cand.provider,
                provider_model=cand.provider_model,
                outcome=router_pb2.ATTEMPT_OUTCOME_CANCELLED,
                error_reason=reasons.HEDGE_LOST,
                error_message="cancelled: another candidate answered first, or the caller left; "
                "the provider may bill the work it started",
                latency=duration(elapsed),
                attempt_number=state.numbers.get(task, 0),
                billable=True,
            )
            job.log.attempts.append(attempt)
            job.log.billable_failures.append((cand, attempt, None))
            if task is state.hedged:
                # Past its usual p95 and beaten by the hedge: its model's breaker should know.
                mb = self.breakers.get(cand.provider, cand.provider_model)
                mb.record_abandoned(reasons.HEDGE_LOST)
        job.log.attempts.sort(key=lambda a: a.attempt_number)
        state.running.clear()

    def earliest_serve_in(self, job: Job) -> float:
        """Seconds until some planned candidate can take a call again (0: one can now).

        An open breaker waits until it half-opens; a provider's own Retry-After counts even
        where the breaker did not take it. A caller told this and obeying it is served.
        """
        now = self.clock()
        waits = []
        for cand in job.plan.candidates:
            until = [
                b.retry_at
                for b in (
                    self.breakers.get(cand.provider),
                    self.breakers.get(cand.provider, cand.provider_model),
                )
                if b.retry_at is not None
            ]
            until.append(job.log.retry_at.get(cand.key, now))
            waits.append(max(0.0, max(until) - now))
        return min(waits, default=0.0)

    def _budget(self, cand: Candidate, followers: list[Candidate], avail: float) -> float:
        """An attempt's share of the time left: its provider timeout, minus time kept back for
        the first follower that could actually be called (its usual p95, at most half)."""
        budget = min(
            self.catalog.provider_timeouts.get(
                cand.provider, self.settings.attempt_timeout_seconds
            ),
            avail,
        )
        nxt = next(
            (
                c
                for c in followers
                if self.breakers.get(c.provider).retry_at is None
                and self.breakers.get(c.provider, c.provider_model).retry_at is None
            ),
            None,
        )
        if nxt is not None:
            typical = self.breakers.get(nxt.provider, nxt.provider_model).latency_quantile(
                0.95, min_samples=5
            )
            hold = min(avail / 2, max(self.settings.min_attempt_seconds, typical or 0.0))
            budget = min(budget, avail - hold)
            # With a follower to go to, no attempt may run far past what its model usually takes.
            usual = self.breakers.get(cand.provider, cand.provider_model).latency_quantile(
                0.99, min_samples=HEDGE_MIN_SAMPLES
            )
            if usual is not None:
                bound = max(
                    self.settings.attempt_bound_floor_seconds,
                    self.settings.attempt_bound_multiplier * usual,
                )
                budget = min(budget, bound)
        return budget

    def _acquire(
        self, pb: CircuitBreaker, mb: CircuitBreaker, *, force: bool
    ) -> tuple[Permit, Permit] | None:
        p = pb.try_acquire(force=force and pb.retry_at is not None)
        if p is None:
            return None
        m = mb.try_acquire(force=force and mb.retry_at is not None)
        if m is None:
            pb.release(p)
            return None
        return p, m

    def _last_resort(self, plan: RoutePlan) -> Candidate | None:
        """When every candidate is open, the one whose wait ends first (never a 429 back-off)."""
        options = []
        for s in plan.skipped:
            if s.kind != "breaker":
                continue
            pb = self.breakers.get(s.candidate.provider)
            mb = self.breakers.get(s.candidate.provider, s.candidate.provider_model)
            if pb.rate_limited or mb.rate_limited:
                continue
            options.append((s.retry_at or 0.0, s.candidate))
        if not options:
            return None
        return min(options, key=lambda o: o[0])[1]


def _too_little_time(avail: float, typical: float | None) -> str:
    left = "no time was left" if avail <= 0 else f"only {avail * 1000:.0f} ms were left"
    usual = f" and it usually takes {typical * 1000:.0f} ms" if typical else ""
    return f"{left} before the deadline{usual}"
