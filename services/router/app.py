"""RouterApp: wires the GenerateImage pipeline and owns the Router's long-lived parts.

The pipeline, one module per stage: admission (validate, authenticate) → idempotency → planning
(candidates, plan tier, cost ceiling; nothing held yet) → reservation → execution (attempts,
deadline split, breakers) → settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable

import grpc
from opentelemetry import trace

from imagegate.enhancer.v1 import enhancer_pb2_grpc
from imagegate.grpckit import reasons
from imagegate.grpckit.arrival import arrived
from imagegate.grpckit.errors import ImagegateError
from imagegate.inputs.checks import InputLimits
from imagegate.metering.v1 import metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2
from imagegate.settlement import Settler
from services.router.adapters import AdapterPool
from services.router.admission import Admitted, Authenticator, Caller
from services.router.attempt import AttemptCaller
from services.router.breaker import BreakerRegistry
from services.router.catalog import Catalog
from services.router.config import RouterSettings
from services.router.dedupe import Deduplicator
from services.router.enhancement import PromptEnhancementStep
from services.router.events import EventSink
from services.router.execution import Executor
from services.router.failures import all_failed
from services.router.generations import Generations
from services.router.idempotency import IdempotencyCache, fingerprint
from services.router.job import Job
from services.router.observability import (
    RequestSummary,
    RouterMetrics,
    span_request,
    span_result,
)
from services.router.pending import PendingWork
from services.router.planning import Planner, RoutePlan
from services.router.prices import PriceMirror
from services.router.reservation import Reserver, default_replica_id
from services.router.reserve_batch import ReserveBatcher
from services.router.settle import RouterSettlement

# How often expired generations are swept from the result store.
RESULT_SWEEP_SECONDS = 300.0


class RouterApp:
    """The Router's behaviour, independent of the gRPC servicer around it."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        catalog: Catalog,
        adapters: AdapterPool,
        quota: quota_pb2_grpc.QuotaServiceStub,
        metering: metering_pb2_grpc.MeteringServiceStub,
        settler: Settler,
        pricer: PriceMirror,
        generations: Generations,
        breakers: BreakerRegistry,
        tracer: trace.Tracer,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
        enhancer: enhancer_pb2_grpc.EnhancerServiceStub | None = None,
    ) -> None:
        self.settings, self.catalog, self.adapters = settings, catalog, adapters
        self.quota, self.metering, self.pricer = quota, metering, pricer
        self.breakers, self.tracer, self.metrics, self.clock = breakers, tracer, metrics, clock
        self.input_limits = InputLimits(
            max_bytes=settings.max_input_image_bytes,
            max_reference_images=settings.max_reference_images,
        )
        self.auth = Authenticator(
            quota,
            cache_seconds=settings.auth_cache_seconds,
            timeout_seconds=settings.dependency_timeout_seconds,
            clock=clock,
            input_limits=self.input_limits,
        )
        self.planner = Planner(catalog, adapters, pricer, clock)
        # Releases of abandoned requests: a tenant's reads wait for them (read-your-writes).
        self.pending = pending = PendingWork()
        # Reserves of concurrent requests share a round trip (and a Quota transaction).
        self.reserve_batcher = ReserveBatcher(quota, tracer, enabled=settings.batch_reserves)
        self.reserver = Reserver(quota, self.auth, settings, pending, self.reserve_batcher)
        self.executor = Executor(
            AttemptCaller(
                settings=settings,
                catalog=catalog,
                adapters=adapters,
                breakers=breakers,
                tracer=tracer,
                metrics=metrics,
            )
        )
        self.enhancement = PromptEnhancementStep(
            stub=enhancer,
            settings=settings,
            catalog=catalog,
            adapters=adapters,
            pricer=pricer,
            tracer=tracer,
        )
        self.settlement = RouterSettlement(
            settings=settings, settler=settler, pricer=pricer, pending=pending
        )
        self.generations = generations
        self.dedupe = Deduplicator(
            IdempotencyCache(
                retention_seconds=settings.idempotency_retention_seconds,
                max_entries=settings.idempotency_max_entries,
                max_bytes=settings.idempotency_max_bytes,
            ),
            generations,
            self.settled,
        )
        self.replica_id = settings.replica_id or default_replica_id(settings.data_dir)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Describes adapters, mirrors prices and starts the settler and refresh loops."""
        timeout = self.settings.dependency_timeout_seconds
        await asyncio.gather(
            self.reserver.release_stale_claims(),
            self.adapters.start(),
            self.pricer.refresh(self.metering, timeout),
            self.settlement.settler.start(),
        )
        refresh = self.pricer.refresh_forever(
            self.metering, every=self.settings.price_refresh_seconds, timeout=timeout
        )
        self._tasks.append(asyncio.create_task(refresh, name="router-prices"))
        sweep = self.generations.sweep_forever(every=RESULT_SWEEP_SECONDS)
        self._tasks.append(asyncio.create_task(sweep, name="router-result-sweep"))

    async def close(self) -> None:
        """Stops loops, flushes settlement, closes adapter channels."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.reserve_batcher.close()
        await self.settlement.close()
        await self.adapters.close()
        await self.dedupe.close()

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of a read RPC (every RPC but GenerateImage)."""
        return await self.auth.authenticate(context)

    async def settled(self, tenant_id: str) -> None:
        """Read-your-writes: waits (bounded) for the tenant's settlements still in delivery."""
        await self.settlement.settled(tenant_id)

    async def generate(
        self,
        request: router_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        events: EventSink | None = None,
    ) -> router_pb2.GenerateImageResponse:
        """The whole request, with its span, metrics, log line and trailers; raises ImagegateError."""
        # From the RPC's arrival at the first interceptor (before its request was deserialized),
        # so the overhead trailer covers what the caller waits for, not only this method.
        t0 = arrived(time.perf_counter())
        self.metrics.in_flight.add(1)
        with self.tracer.start_as_current_span("router.generate") as span:
            ctx = span.get_span_context()
            summary = RequestSummary(trace_id=f"{ctx.trace_id:032x}" if ctx.is_valid else "")
            try:
                response = await self._pipeline(request, context, events, span, summary)
                summary.outcome = "succeeded"
                summary.provider, summary.model = response.provider, response.model
                summary.cost_micros = response.cost_micros
                return response
            except ImagegateError as err:
                summary.outcome = err.reason.lower()
                err.metadata.setdefault(reasons.META_TRACE_ID, summary.trace_id)
                raise
            except asyncio.CancelledError:
                summary.outcome = "cancelled"
                raise
            finally:
                span.set_attribute("imagegate.outcome", summary.outcome)
                span.set_attribute("imagegate.attempts", summary.attempts)
                overhead = self.metrics.finish_request(summary, time.perf_counter() - t0)
                with contextlib.suppress(Exception):
                    context.set_trailing_metadata(
                        (
                            ("x-imagegate-trace-id", summary.trace_id),
                            ("x-imagegate-overhead-ms", f"{overhead * 1000:.3f}"),
                            ("x-imagegate-cost-micros", str(summary.cost_micros)),
                            ("x-imagegate-replica-id", self.replica_id),
                        )
                    )

    async def _pipeline(
        self,
        request: router_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        events: EventSink | None,
        span: trace.Span,
        summary: RequestSummary,
    ) -> router_pb2.GenerateImageResponse:
        span_request(span, request, self.settings)
        admitted = await self.auth.admit(
            request, context, self.catalog, self.settings.default_deadline_seconds
        )
        summary.request_id, summary.tenant_id = admitted.request_id, admitted.caller.tenant_id
        span.set_attribute("imagegate.tenant_id", admitted.caller.tenant_id)
        if not admitted.dedupe:
            return await self._run(admitted, events, span, summary, None)
        fp = fingerprint(request)
        run = functools.partial(self._run, admitted, events, span, summary, fp)
        return await self.dedupe.once(admitted, fp, events, span, run)

    async def _run(
        self,
        admitted: Admitted,
        events: EventSink | None,
        span: trace.Span,
        summary: RequestSummary,
        fp: bytes | None,
    ) -> router_pb2.GenerateImageResponse:
        """Plan, reserve (the claim on the request_id), execute, settle, keep the outcome."""
        plan = self.planner.plan(admitted.norm, admitted.caller)
        hold = self.planner.hold_micros(plan, admitted.norm)
        claim = self.reserver.new_claim()
        try:
            reservation = await self.reserver.reserve(admitted, hold, plan, claim)
        except ImagegateError as err:
            if fp is None or err.reason != reasons.IDEMPOTENCY_KEY_REUSED:
                raise
            # The id's reservation differs from this hold (a price changed since it ran): a
            # finished request with the same body is still a replay.
            earlier = await self.dedupe.stored(admitted, fp, span)
            if earlier is None:
                raise
            return earlier
        if reservation is not None and reservation.id != claim and fp is not None:
            # Another call (on any replica) claimed this request_id first: follow it.
            return await self.dedupe.follow(admitted, reservation, fp)
        if reservation is None and fp is not None:
            # Quota unreachable (fail-open): only the shared store can tell a repeat.
            earlier = await self.dedupe.stored(admitted, fp, span)
            if earlier is not None:
                return earlier
        if reservation is not None and reservation.state != quota_pb2.RESERVATION_STATE_PENDING:
            raise self.dedupe.cache.spent_error(admitted.request_id, reservation)
        try:
            response = await self._execute(admitted, plan, reservation, events, span, summary)
        except ImagegateError as err:
            self.dedupe.keep(admitted, fp, err)
            raise
        self.dedupe.keep(admitted, fp, response)
        return response

    async def _execute(
        self,
        admitted: Admitted,
        plan: RoutePlan,
        reservation: quota_pb2.Reservation | None,
        events: EventSink | None,
        span: trace.Span,
        summary: RequestSummary,
    ) -> router_pb2.GenerateImageResponse:
        job = Job(admitted, plan, reservation, summary.trace_id, span, events)
        tenant = admitted.caller.tenant_id
        try:
            # Before the attempts, inside the abandon guard: tokens spent are settled either way.
            job.enhancement = await self.enhancement.run(admitted, plan)
            if events is not None and job.enhancement.report is not None:
                events.emit(prompt_enhanced=job.enhancement.report)
            execution = await self.executor.run(job)
        except BaseException:
            self.settlement.abandon(job)
            raise
        finally:
            summary.attempts = len(job.log.attempts)
            summary.adapter_seconds = job.log.adapter_seconds
        if execution.winner is None:
            # To the end even if the caller leaves now: no hold or record may be left half-done.
            summary.cost_micros = await self.pending.run(tenant, self.settlement.fail(job))
            if not job.log.attempts:
                raise self.planner.no_candidate(plan, admitted.norm)
            retry_in = self.executor.earliest_serve_in(job)
            raise all_failed(
                job, execution.stop, retry_in=retry_in, cost_micros=summary.cost_micros
            )
        response = await self.pending.run(tenant, self.settlement.succeed(job, *execution.winner))
        span_result(span, response, self.metrics)
        return response
