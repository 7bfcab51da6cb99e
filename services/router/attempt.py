"""One attempt: call one adapter within its budget, classify the answer, feed the breakers."""

from __future__ import annotations

import asyncio
import time

import grpc
from opentelemetry import trace

from imagegate.grpckit import reasons
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.router.v1 import router_pb2
from services.router.adapters import AdapterPool
from services.router.breaker import BreakerRegistry, BreakerState, CircuitBreaker, Permit
from services.router.catalog import Candidate, Catalog
from services.router.config import RouterSettings
from services.router.events import EventSink, duration
from services.router.job import Job
from services.router.observability import RouterMetrics
from services.router.outcomes import OUTCOME_NAME, AttemptResult, classify

# An attempt with less time than this cannot produce an image; it is skipped, not started.
MIN_USEFUL_ATTEMPT = 0.05


class AttemptCaller:
    """Makes one adapter call for a job and records it in the job's attempt log."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        catalog: Catalog,
        adapters: AdapterPool,
        breakers: BreakerRegistry,
        tracer: trace.Tracer,
        metrics: RouterMetrics,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.adapters = adapters
        self.breakers = breakers
        self.tracer = tracer
        self.metrics = metrics
        self.clock = breakers.clock

    async def call(
        self,
        job: Job,
        cand: Candidate,
        permits: tuple[Permit, Permit],
        budget: float,
        number: int,
    ) -> AttemptResult:
        norm, events, log = job.admitted.norm, job.events, job.log
        adapter = self.adapters.get(cand.provider)
        assert adapter is not None
        preq = provider_pb2.GenerateImageRequest()
        preq.CopyFrom(norm.template)
        preq.model = cand.provider_model
        caps = adapter.models.get(cand.provider_model)
        if caps is not None and not caps.capabilities.negative_prompt and not norm.caller_negative:
            # A style's negative prompt is best effort; the caller's own is a requirement.
            preq.negative_prompt = ""
        pb, mb = (
            self.breakers.get(cand.provider),
            self.breakers.get(cand.provider, cand.provider_model),
        )
        breaker_state = mb.state if mb.state is not BreakerState.CLOSED else pb.state
        if events is not None:
            events.emit(
                attempt_started=router_pb2.AttemptStarted(
                    provider=cand.provider,
                    provider_model=cand.provider_model,
                    attempt_number=number,
                    budget=duration(budget),
                )
            )
        with self.tracer.start_as_current_span(
            "router.attempt",
            attributes={
                "imagegate.provider": cand.provider,
                "imagegate.provider_model": cand.provider_model,
                "imagegate.model": cand.alias,
                "imagegate.attempt_number": number,
                "imagegate.breaker_state": breaker_state.value,
                "imagegate.attempt_budget_s": round(budget, 3),
            },
        ) as aspan:
            queued_at = time.perf_counter()
            started = queued_at
            try:
                gate = adapter.gate
                if await gate.acquire(budget - MIN_USEFUL_ATTEMPT):
                    started = time.perf_counter()
                    aspan.set_attribute("imagegate.queue_seconds", round(started - queued_at, 4))
                    try:
                        result = await self._call(
                            adapter.stub, preq, budget - (started - queued_at), events, cand
                        )
                    finally:
                        gate.release()
                else:
                    started = time.perf_counter()
                    result = AttemptResult(
                        router_pb2.ATTEMPT_OUTCOME_OVERLOADED,
                        reasons.PROVIDER_CONCURRENCY_LIMITED,
                        f"{gate.limit} calls already in flight to {cand.provider}; no slot came "
                        f"free within the attempt budget ({budget:.2f}s)",
                    )
            except asyncio.CancelledError:
                for b, p in zip((pb, mb), permits, strict=True):
                    b.release(p)
                raise
            elapsed = time.perf_counter() - started
            if result.outcome == router_pb2.ATTEMPT_OUTCOME_TIMEOUT and self._short_budget(
                mb, budget, cand
            ):
                # We gave it less than it normally needs: that timeout is ours, not its health.
                result.scope = ""
            self._account(result, permits, pb, mb, elapsed)
            if result.reason == reasons.PROVIDER_DISABLED:
                # Lost its credentials since the last describe: stop routing to it right away.
                adapter.enabled = False
            outcome_name = OUTCOME_NAME.get(result.outcome, "failed")
            aspan.set_attribute("imagegate.outcome", outcome_name)
            aspan.set_attribute("imagegate.error_reason", result.reason)
            aspan.set_attribute("imagegate.billable", result.billable)
            if result.outcome != router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
                aspan.set_status(trace.Status(trace.StatusCode.ERROR, result.reason))
        self.metrics.attempt_duration.record(
            elapsed, {"provider": cand.provider, "outcome": outcome_name}
        )
        attempt = router_pb2.Attempt(
            provider=cand.provider,
            provider_model=cand.provider_model,
            outcome=result.outcome,  # type: ignore[arg-type]
            error_reason=result.reason,
            error_message=result.message[:500],
            latency=duration(elapsed),
            attempt_number=number,
            billable=result.billable,
        )
        log.attempts.append(attempt)
        if result.retry_after:
            log.retry_at[cand.key] = max(
                log.retry_at.get(cand.key, 0.0), self.clock() + result.retry_after
            )
        if result.billable and result.outcome != router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            log.billable_failures.append((cand, attempt, result.usage))
        if events is not None and result.outcome != router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            events.emit(attempt_failed=attempt)
        return result

    async def _call(
        self,
        stub: provider_pb2_grpc.ProviderServiceStub,
        preq: provider_pb2.GenerateImageRequest,
        budget: float,
        events: EventSink | None,
        cand: Candidate,
    ) -> AttemptResult:
        try:
            if events is None:
                resp = await stub.GenerateImage(preq, timeout=budget)
            else:
                resp = None
                call = stub.StreamGenerateImage(
                    provider_pb2.StreamGenerateImageRequest(request=preq), timeout=budget
                )
                async for msg in call:
                    if msg.HasField("progress"):
                        events.emit(
                            progress=router_pb2.ProviderProgress(
                                provider=cand.provider,
                                state=msg.progress.state,
                                queue_position=msg.progress.queue_position,
                                fraction=msg.progress.fraction,
                                provider_job_id=msg.progress.provider_job_id,
                            )
                        )
                    elif msg.HasField("result"):
                        resp = msg.result
                if resp is None:
                    return AttemptResult(
                        router_pb2.ATTEMPT_OUTCOME_BAD_RESPONSE,
                        reasons.PROVIDER_BAD_RESPONSE,
                        "adapter stream ended without a result",
                        scope="model",
                    )
        except grpc.aio.AioRpcError as err:
            return classify(err)
        if len(resp.images) != preq.num_images or any(not i.data for i in resp.images):
            return AttemptResult(
                router_pb2.ATTEMPT_OUTCOME_BAD_RESPONSE,
                reasons.PROVIDER_BAD_RESPONSE,
                f"adapter returned {len(resp.images)} images, {preq.num_images} requested",
                billable=True,
                scope="model",
                usage=resp.usage,
            )
        return AttemptResult(router_pb2.ATTEMPT_OUTCOME_SUCCEEDED, response=resp)

    def _short_budget(self, mb: CircuitBreaker, budget: float, cand: Candidate) -> bool:
        """Whether an attempt's budget was below twice the model's typical latency."""
        full = self.catalog.provider_timeouts.get(
            cand.provider, self.settings.attempt_timeout_seconds
        )
        typical = mb.latency_quantile(0.5, min_samples=5)
        return budget < full and typical is not None and budget < 2 * typical

    def _account(
        self,
        result: AttemptResult,
        permits: tuple[Permit, Permit],
        pb: CircuitBreaker,
        mb: CircuitBreaker,
        elapsed: float,
    ) -> None:
        pp, mp = permits
        if result.outcome == router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            pb.on_success(pp, elapsed)
            mb.on_success(mp, elapsed)
        elif result.scope == "provider":
            pb.on_failure(pp, result.reason, retry_after=result.retry_after)
            mb.release(mp)
        elif result.scope == "model":
            mb.on_failure(mp, result.reason, retry_after=result.retry_after)
            # A model failure still shows the provider answered: it neither helps nor hurts it.
            pb.release(pp)
        else:
            pb.release(pp)
            mb.release(mp)
