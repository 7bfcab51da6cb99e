"""RouterApp: authenticate and reserve, choose candidates, fail over within the deadline, settle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf import duration_pb2
from opentelemetry import trace

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.auth import require_bearer
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError, from_parsed, parse_rpc_error, timestamp
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2
from imagegate.telemetry.redact import redact
from services.router.adapters import AdapterPool
from services.router.breaker import BreakerRegistry, BreakerState, CircuitBreaker, Permit
from services.router.catalog import Candidate, Catalog
from services.router.config import RouterSettings
from services.router.idempotency import IdempotencyCache, Outcome, fingerprint
from services.router.observability import RouterMetrics
from services.router.seams import PriceMirror, SettlementOrder, SettlerLike
from services.router.throttle import RetryThrottle
from services.router.validation import Normalized, capability_gaps, normalize

log = logging.getLogger("services.router")
DOMAIN = "imagegate.router"
# An attempt with less time than this cannot produce an image; it is skipped, not started.
MIN_USEFUL_ATTEMPT = 0.05
BREAKER_PROTO = {
    BreakerState.CLOSED: router_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: router_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: router_pb2.BREAKER_STATE_HALF_OPEN,
}
OUTCOME_NAME: dict[int, str] = {
    int(v): k.removeprefix("ATTEMPT_OUTCOME_").lower() for k, v in router_pb2.AttemptOutcome.items()
}


@dataclass
class Caller:
    """An authenticated caller."""

    tenant_id: str
    """Tenant id (safe to log)."""
    plan: quota_pb2.Plan
    """The tenant's plan."""
    key_id: str = ""
    """Public id of the key."""


@dataclass
class AttemptResult:
    """How one adapter call ended, classified for failover and breakers."""

    outcome: int
    """AttemptOutcome value."""
    reason: str = ""
    """ErrorInfo reason; empty on success."""
    message: str = ""
    """Error message."""
    billable: bool = False
    """The provider may bill the attempt."""
    retry_after: float | None = None
    """Provider's Retry-After on a rate limit."""
    scope: str = ""
    """Breaker charged: "provider", "model", or "" (says nothing about health)."""
    failover: bool = True
    """Whether the next candidate may be tried."""
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """Code to return when this attempt ends the request."""
    response: provider_pb2.GenerateImageResponse | None = None
    """The adapter's answer on success."""


@dataclass
class Skip:
    """A candidate not tried, and why."""

    candidate: Candidate
    kind: str
    text: str
    retry_at: float | None = None


@dataclass
class RoutePlan:
    """Candidates that survived the filters so far."""

    candidates: list[Candidate]
    skipped: list[Skip] = field(default_factory=list)
    local_substitute: bool = False
    notices: list[str] = field(default_factory=list)


class EventSink:
    """Collects StreamGenerateImage events; the servicer drains them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[router_pb2.StreamGenerateImageResponse | None] = asyncio.Queue()
        self.started = time.monotonic()

    def emit(self, **event: object) -> None:
        """Queues one event, stamped with the seconds since acceptance."""
        msg = router_pb2.StreamGenerateImageResponse(
            elapsed_seconds=time.monotonic() - self.started,
            **event,  # type: ignore[arg-type]
        )
        self.queue.put_nowait(msg)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return d


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


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
        settler: SettlerLike,
        pricer: PriceMirror,
        breakers: BreakerRegistry,
        tracer: trace.Tracer,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.adapters = adapters
        self.quota = quota
        self.metering = metering
        self.settler = settler
        self.pricer = pricer
        self.breakers = breakers
        self.tracer = tracer
        self.metrics = metrics
        self.clock = clock
        self.idempotency = IdempotencyCache(
            retention_seconds=settings.idempotency_retention_seconds,
            max_entries=settings.idempotency_max_entries,
            max_bytes=settings.idempotency_max_bytes,
        )
        self.throttle = RetryThrottle(settings.failover_max_tokens, settings.failover_token_ratio)
        self._auth_cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Describes adapters, mirrors prices and starts the settler and refresh loops."""
        await asyncio.gather(self.adapters.start(), self.refresh_prices(), self.settler.start())
        self._tasks.append(asyncio.create_task(self._price_loop(), name="router-prices"))

    async def close(self) -> None:
        """Stops loops, flushes the settler, closes adapter channels."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=10.0)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.settler.close()
        await self.adapters.close()

    async def refresh_prices(self) -> bool:
        """Mirrors Metering's price catalog; keeps the old copy when Metering is down."""
        try:
            resp = await self.metering.ListPrices(
                metering_pb2.ListPricesRequest(), timeout=self.settings.dependency_timeout_seconds
            )
        except grpc.aio.AioRpcError as err:
            log.warning("price catalog not refreshed: %s", err.code().name)
            return False
        self.pricer.replace(list(resp.prices), version=resp.catalog_version)
        return True

    async def _price_loop(self) -> None:
        while True:
            # Retry quickly until the first copy arrives, then at the configured pace.
            wait = self.settings.price_refresh_seconds if self.pricer.size else 2.0
            await asyncio.sleep(wait)
            await self.refresh_prices()

    # ---- authentication ----------------------------------------------------------------------

    def _remember(self, api_key: str, caller: Caller) -> None:
        h = _key_hash(api_key)
        self._auth_cache[h] = (caller, self.clock() + self.settings.auth_cache_seconds)
        self._auth_cache.move_to_end(h)
        while len(self._auth_cache) > 100_000:
            self._auth_cache.popitem(last=False)

    def _cached_caller(self, api_key: str) -> Caller | None:
        hit = self._auth_cache.get(_key_hash(api_key))
        if hit is None or hit[1] < self.clock():
            return None
        return hit[0]

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """Resolves the caller's key with Quota (used by every RPC but GenerateImage)."""
        api_key = require_bearer(context, domain=DOMAIN)
        remaining = context.time_remaining()
        timeout = self.settings.dependency_timeout_seconds
        if remaining is not None:
            timeout = max(0.001, min(timeout, remaining))
        try:
            resp = await self.quota.AuthenticateApiKey(
                quota_pb2.AuthenticateApiKeyRequest(api_key=api_key), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            raise self._quota_error(err, api_key) from None
        caller = Caller(resp.tenant.id, resp.plan, resp.key_id)
        self._remember(api_key, caller)
        return caller

    def _quota_error(self, err: grpc.aio.AioRpcError, api_key: str) -> ImagegateError:
        parsed = parse_rpc_error(err)
        if parsed.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
            not parsed.reason or parsed.reason == reasons.DEPENDENCY_UNAVAILABLE
        ):
            return ImagegateError(
                grpc.StatusCode.UNAVAILABLE,
                reasons.DEPENDENCY_UNAVAILABLE,
                "the quota service is unreachable; retry shortly",
                domain=DOMAIN,
                metadata={"dependency": "quota", "code": parsed.code.name},
                retry_after_seconds=1.0,
            )
        return from_parsed(parsed)

    # ---- planning ---------------------------------------------------------------------------

    def static_plan(self, norm: Normalized) -> RoutePlan:
        """Candidates after the filters that need no tenant: enabled, lists, capabilities."""
        req = norm.request
        allowed, blocked = set(req.allowed_providers), set(req.blocked_providers)
        plan = RoutePlan(candidates=[])
        local = self.catalog.local_provider
        requested: list[Candidate] = []
        for alias in norm.aliases:
            requested.extend(self.catalog.models[alias].candidates)
        if not self.adapters.hosted_enabled() and not all(c.provider == local for c in requested):
            alias = norm.explicit_model or "local"
            tier = (
                self.catalog.models[norm.explicit_model].tier if norm.explicit_model else "budget"
            )
            requested = [self.catalog.local_candidate(alias, tier)]
            plan.local_substitute = True
            plan.notices.append(
                "no hosted provider is enabled: the local backend (procedural images) served "
                f"this request in place of {'/'.join(norm.aliases) or 'the requested models'}"
            )
        seen: set[tuple[str, str]] = set()
        for cand in requested:
            if (cand.provider, cand.provider_model) in seen:
                continue
            seen.add((cand.provider, cand.provider_model))
            adapter = self.adapters.get(cand.provider)
            if adapter is None or not adapter.described:
                plan.skipped.append(Skip(cand, "disabled", "adapter not configured or unreachable"))
                continue
            if not adapter.enabled:
                plan.skipped.append(Skip(cand, "disabled", "provider not enabled (no credentials)"))
                continue
            if allowed and cand.provider not in allowed:
                plan.skipped.append(Skip(cand, "provider_filter", "not in allowed_providers"))
                continue
            if cand.provider in blocked:
                plan.skipped.append(Skip(cand, "provider_filter", "in blocked_providers"))
                continue
            model = adapter.models.get(cand.provider_model)
            if model is None:
                plan.skipped.append(Skip(cand, "capability", "adapter does not serve this model"))
                continue
            gaps, hard = capability_gaps(
                model.capabilities, norm.template, caller_negative=norm.caller_negative
            )
            if gaps and (hard or not req.allow_degradation):
                plan.skipped.append(Skip(cand, "capability", "; ".join(gaps)))
                continue
            plan.candidates.append(cand)
        if req.preference == router_pb2.PREFERENCE_BUDGET and not norm.explicit_model:
            quotes = {c: self.quote(c, norm) for c in plan.candidates}
            unknown = 1 << 62
            plan.candidates.sort(key=lambda c: q if (q := quotes[c]) is not None else unknown)
        return plan

    def quote(self, cand: Candidate, norm: Normalized) -> int | None:
        """Expected price of a candidate in micro-USD (None when Metering has no price)."""
        if cand.price_unit == catalog_pb2.PRICE_UNIT_FREE:
            return 0
        t = norm.template
        return self.pricer.quote(
            cand.provider,
            cand.provider_model,
            width=t.width,
            height=t.height,
            num_images=t.num_images,
            steps=t.steps if t.HasField("steps") else None,
        )

    def tenant_filters(self, plan: RoutePlan, norm: Normalized, caller: Caller) -> None:
        """Removes candidates the plan forbids or that cost more than the ceiling."""
        tiers = set(caller.plan.allowed_tiers)
        # The local stand-in counts as budget, so a substitute is never forbidden by the alias.
        if norm.explicit_model and tiers and not plan.local_substitute:
            tier = self.catalog.models[norm.explicit_model].tier
            if tier not in tiers:
                raise ImagegateError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    reasons.PLAN_FORBIDS_MODEL,
                    f"plan {caller.plan.id!r} allows tiers {', '.join(sorted(tiers))}; model "
                    f"{norm.explicit_model!r} is {tier}",
                    domain=DOMAIN,
                    metadata={
                        "plan": caller.plan.id,
                        "model": norm.explicit_model,
                        "tier": tier,
                        "allowed_tiers": ",".join(sorted(tiers)),
                    },
                )
        kept: list[Candidate] = []
        for cand in plan.candidates:
            tier = "budget" if cand.provider == self.catalog.local_provider else cand.tier
            if tiers and tier not in tiers:
                plan.skipped.append(
                    Skip(cand, "plan", f"plan {caller.plan.id} excludes tier {tier}")
                )
            else:
                kept.append(cand)
        if plan.candidates and not kept and not norm.explicit_model:
            kept = self._plan_fallback(plan, norm, tiers, caller.plan.id)
        if plan.candidates and not kept:
            raise ImagegateError(
                grpc.StatusCode.PERMISSION_DENIED,
                reasons.PLAN_FORBIDS_MODEL,
                f"plan {caller.plan.id!r} allows tiers {', '.join(sorted(tiers))}; no enabled "
                "candidate for this request is in them (try preference BUDGET)",
                domain=DOMAIN,
                metadata={"plan": caller.plan.id, "allowed_tiers": ",".join(sorted(tiers))},
            )
        plan.candidates = kept
        ceiling = norm.request.max_cost_micros
        if ceiling <= 0:
            return
        priced: list[tuple[Candidate, int | None]] = [(c, self.quote(c, norm)) for c in kept]
        within = [c for c, q in priced if q is not None and q <= ceiling]
        for c, q in priced:
            if c not in within:
                text = "price unknown" if q is None else f"costs {q} micro-USD > {ceiling}"
                plan.skipped.append(Skip(c, "cost", text))
        if priced and not within:
            known = [(q, c) for c, q in priced if q is not None]
            cheapest = min(known, key=lambda qc: qc[0]) if known else None
            meta = {"max_cost_micros": str(ceiling)}
            msg = f"no candidate costs at most {ceiling} micro-USD"
            if cheapest is not None:
                q, c = cheapest
                meta.update(
                    cheapest_provider=c.provider,
                    cheapest_model=c.alias,
                    cheapest_provider_model=c.provider_model,
                    cheapest_cost_micros=str(q),
                )
                msg += f"; the cheapest option is {c.alias} on {c.key} at {q} micro-USD"
            raise ImagegateError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.COST_CEILING_UNMET,
                msg,
                domain=DOMAIN,
                metadata=meta,
            )
        plan.candidates = within

    def _plan_fallback(
        self, plan: RoutePlan, norm: Normalized, tiers: set[str], plan_id: str
    ) -> list[Candidate]:
        """Candidates of the models the plan allows, when the preference named none of them.

        A preference is a wish, not a requirement: a free tenant asking for BALANCED gets the
        budget models (in BUDGET order) rather than an error. An explicit model stays strict.
        """
        order = list(self.catalog.aliases_for(router_pb2.PREFERENCE_BUDGET))
        order += [a for a in self.catalog.models if a not in order]
        aliases = tuple(
            a for a in order if a not in norm.aliases and self.catalog.models[a].tier in tiers
        )
        if not aliases:
            return []
        extra = self.static_plan(dataclasses.replace(norm, aliases=aliases))
        kept = [
            c
            for c in extra.candidates
            if c.tier in tiers or c.provider == self.catalog.local_provider
        ]
        if kept:
            wanted = router_pb2.Preference.Name(
                norm.request.preference or router_pb2.PREFERENCE_BALANCED
            )
            plan.notices.append(
                f"plan {plan_id} allows tiers {', '.join(sorted(tiers))}: "
                f"{wanted.removeprefix('PREFERENCE_').lower()} models are outside it, so "
                f"{kept[0].alias} was used"
            )
        return kept

    def _no_candidate(self, plan: RoutePlan, norm: Normalized) -> ImagegateError:
        # Candidates filtered out statically (not enabled, lists, capabilities) do not explain
        # why the ones that passed were not called; breakers and the deadline do.
        dynamic = {s.kind for s in plan.skipped if s.kind in ("breaker", "deadline")}
        kinds = dynamic or {s.kind for s in plan.skipped}
        detail = "; ".join(f"{s.candidate.key}: {s.text}" for s in plan.skipped[:12])
        meta = {"skipped": json.dumps([[s.candidate.key, s.kind] for s in plan.skipped])[:2000]}
        if kinds == {"deadline"}:
            return ImagegateError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                reasons.DEADLINE_TOO_SHORT,
                f"no candidate can finish in the time left: {detail}",
                domain=DOMAIN,
                metadata=meta,
            )
        if dynamic:
            retry = [s.retry_at for s in plan.skipped if s.retry_at is not None]
            wait = max(0.0, min(retry) - self.clock()) if retry else 1.0
            return ImagegateError(
                grpc.StatusCode.UNAVAILABLE,
                reasons.NO_CANDIDATE,
                f"every candidate is unhealthy (circuit open): {detail}",
                domain=DOMAIN,
                metadata=meta,
                retry_after_seconds=wait,
            )
        models = "/".join(norm.aliases) or "(none)"
        return ImagegateError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.NO_CANDIDATE,
            f"no enabled provider can serve {models} for this request: {detail or 'none configured'}",
            domain=DOMAIN,
            metadata=meta,
        )

    # ---- generation -------------------------------------------------------------------------

    async def generate(
        self,
        request: router_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        events: EventSink | None = None,
    ) -> router_pb2.GenerateImageResponse:
        """The whole request: validate, reserve, route, settle; raises ImagegateError."""
        t0 = time.perf_counter()
        self.metrics.in_flight.add(1)
        with self.tracer.start_as_current_span("router.generate") as span:
            ctx = span.get_span_context()
            trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
            state = _RequestState(trace_id=trace_id)
            outcome = "error"
            try:
                response = await self._generate(request, context, events, span, state)
                outcome = "succeeded"
                return response
            except ImagegateError as err:
                outcome = err.reason.lower()
                err.metadata.setdefault(reasons.META_TRACE_ID, trace_id)
                raise
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                elapsed = time.perf_counter() - t0
                overhead = max(0.0, elapsed - state.adapter_seconds)
                span.set_attribute("imagegate.outcome", outcome)
                span.set_attribute("imagegate.attempts", len(state.attempts))
                labels = {"model": state.model, "provider": state.provider, "outcome": outcome}
                self.metrics.requests.add(1, labels)
                self.metrics.duration.record(elapsed, labels)
                self.metrics.overhead.record(overhead, {"outcome": outcome})
                self.metrics.in_flight.add(-1)
                with contextlib.suppress(Exception):
                    context.set_trailing_metadata(
                        (
                            ("x-imagegate-trace-id", trace_id),
                            ("x-imagegate-overhead-ms", f"{overhead * 1000:.3f}"),
                        )
                    )
                log.info(
                    "request finished",
                    extra={
                        "event": "request",
                        "tenant_id": state.tenant_id,
                        "request_id": state.request_id,
                        "outcome": outcome,
                        "attempts": len(state.attempts),
                        "provider": state.provider,
                        "model": state.model,
                        "cost_micros": state.cost_micros,
                        "duration_ms": round(elapsed * 1000, 3),
                        "overhead_ms": round(overhead * 1000, 3),
                    },
                )

    async def _generate(
        self,
        request: router_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        events: EventSink | None,
        span: trace.Span,
        state: _RequestState,
    ) -> router_pb2.GenerateImageResponse:
        api_key = require_bearer(context, domain=DOMAIN)
        deadline = Deadline.from_context(context, self.settings.default_deadline_seconds)
        norm = normalize(request, self.catalog)
        request_id = request.request_id or f"rtr-{uuid.uuid4().hex}"
        norm.template.request_id = request_id
        state.request_id = request_id
        span.set_attribute("imagegate.preference", router_pb2.Preference.Name(request.preference))
        span.set_attribute("imagegate.model", request.model or "")
        if self.settings.record_prompts:
            # Redacted as well as truncated: prompts sometimes carry pasted credentials.
            span.set_attribute(
                "imagegate.prompt", redact(request.prompt[: self.settings.prompt_record_chars])
            )
        plan = self.static_plan(norm)
        if not plan.candidates:
            raise self._no_candidate(plan, norm)
        hold = [self.quote(c, norm) for c in plan.candidates]
        reserve_cost = max((q for q in hold if q is not None), default=0)
        if request.max_cost_micros > 0:
            reserve_cost = min(reserve_cost, request.max_cost_micros)
        caller, reservation = await self._reserve(
            api_key, request_id, norm, reserve_cost, deadline, plan
        )
        state.tenant_id = caller.tenant_id
        span.set_attribute("imagegate.tenant_id", caller.tenant_id)

        fp = fingerprint(request)
        dedupe = bool(request.request_id)
        if dedupe:
            earlier = self.idempotency.lookup(caller.tenant_id, request_id, fp)
            if earlier is not None:
                span.set_attribute("imagegate.idempotent_replay", True)
                replay = await self._await_earlier(earlier, deadline, request_id, events)
                await self.settled(caller.tenant_id)
                state.provider, state.model = replay.provider, replay.model
                return replay
            if reservation is not None and reservation.state != quota_pb2.RESERVATION_STATE_PENDING:
                raise self.idempotency.expired_error(request_id)
            self.idempotency.begin(caller.tenant_id, request_id, fp)
        result: Outcome = (None, None)
        try:
            try:
                self.tenant_filters(plan, norm, caller)
                if not plan.candidates:
                    raise self._no_candidate(plan, norm)
                response = await self._route(
                    norm, plan, caller, reservation, deadline, events, span, state
                )
                result = (response, None)
                return response
            except ImagegateError as err:
                if state.settled is False and reservation is not None:
                    await self._settle_failure(norm, caller, reservation, deadline, state)
                result = (None, err)
                raise
            except (asyncio.CancelledError, Exception):
                if not state.settled and reservation is not None:
                    # The caller left (or we failed): return the hold now, not at lease expiry.
                    task = asyncio.create_task(
                        self._settle_failure(norm, caller, reservation, Deadline.after(5.0), state)
                    )
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                raise
        finally:
            if dedupe:
                if result[0] is None and result[1] is None:
                    self.idempotency.forget(caller.tenant_id, request_id)
                else:
                    self.idempotency.finish(caller.tenant_id, request_id, result)

    async def _await_earlier(
        self,
        earlier: asyncio.Future[Outcome],
        deadline: Deadline,
        request_id: str,
        events: EventSink | None,
    ) -> router_pb2.GenerateImageResponse:
        try:
            response, error = await asyncio.wait_for(
                asyncio.shield(earlier), timeout=max(0.001, deadline.remaining())
            )
        except TimeoutError:
            raise ImagegateError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                reasons.DEADLINE_TOO_SHORT,
                f"request_id {request_id!r} is still running; this repeat's deadline ran out",
                domain=DOMAIN,
                metadata={"request_id": request_id},
            ) from None
        except asyncio.CancelledError:
            if earlier.cancelled():
                raise ImagegateError(
                    grpc.StatusCode.ABORTED,
                    reasons.INTERNAL,
                    f"the first call with request_id {request_id!r} was abandoned; retry",
                    domain=DOMAIN,
                    metadata={"request_id": request_id},
                ) from None
            raise
        if error is not None:
            raise error
        assert response is not None
        if events is not None:
            events.emit(
                accepted=router_pb2.Accepted(request_id=request_id, trace_id=response.trace_id)
            )
        return response

    async def _reserve(
        self,
        api_key: str,
        request_id: str,
        norm: Normalized,
        cost: int,
        deadline: Deadline,
        plan: RoutePlan,
    ) -> tuple[Caller, quota_pb2.Reservation | None]:
        req = quota_pb2.ReserveQuotaRequest(
            api_key=api_key,
            request_id=request_id,
            images=norm.num_images,
            megapixels=norm.megapixels,
            cost_micros=cost,
        )
        # Bounded by the caller's deadline, not a short fixed timeout: under a burst Quota queues,
        # and a caller with time left would rather wait than fail.
        left = deadline.remaining() - self.settings.settle_margin_seconds - MIN_USEFUL_ATTEMPT
        timeout = max(0.001, min(self.settings.reserve_timeout_seconds, left))
        try:
            resp = await self.quota.ReserveQuota(req, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            error = self._quota_error(err, api_key)
            if error.reason == reasons.DEPENDENCY_UNAVAILABLE and self.settings.fail_open:
                cached = self._cached_caller(api_key)
                if cached is not None:
                    plan.notices.append(
                        "quota service unreachable: served in fail-open mode; usage is recorded "
                        "and charged when it returns"
                    )
                    log.warning(
                        "quota unreachable, serving in fail-open mode",
                        extra={"tenant_id": cached.tenant_id},
                    )
                    return cached, None
            raise error from None
        caller = Caller(resp.tenant.id, resp.plan, resp.key_id)
        self._remember(api_key, caller)
        return caller, resp.reservation

    async def _route(
        self,
        norm: Normalized,
        plan: RoutePlan,
        caller: Caller,
        reservation: quota_pb2.Reservation | None,
        deadline: Deadline,
        events: EventSink | None,
        span: trace.Span,
        state: _RequestState,
    ) -> router_pb2.GenerateImageResponse:
        request_id = norm.template.request_id
        if events is not None:
            events.emit(
                accepted=router_pb2.Accepted(
                    request_id=request_id,
                    candidates=[c.key for c in plan.candidates],
                    trace_id=state.trace_id,
                )
            )
        margin = self.settings.settle_margin_seconds
        queue = list(plan.candidates)
        forced = False
        success: tuple[Candidate, provider_pb2.GenerateImageResponse] | None = None
        stop: AttemptResult | None = None
        i = 0
        while i < len(queue):
            cand = queue[i]
            i += 1
            avail = deadline.remaining() - margin
            pb = self.breakers.get(cand.provider)
            mb = self.breakers.get(cand.provider, cand.provider_model)
            observed = mb.latency_quantile(0.5, min_samples=5)
            if avail < MIN_USEFUL_ATTEMPT or (observed is not None and observed > avail):
                text = f"{avail:.2f}s left" + (f", typical {observed:.2f}s" if observed else "")
                plan.skipped.append(Skip(cand, "deadline", text))
                continue
            permits = self._acquire(pb, mb, force=forced and i == len(queue))
            if permits is None:
                retry = [b.retry_at for b in (pb, mb) if b.retry_at is not None]
                plan.skipped.append(
                    Skip(
                        cand,
                        "breaker",
                        f"circuit open ({pb.name if pb.retry_at else mb.name})",
                        retry_at=max(retry) if retry else None,
                    )
                )
                if i == len(queue) and not state.attempts and not forced:
                    last = self._last_resort(plan)
                    if last is not None:
                        forced = True
                        queue.append(last)
                        plan.notices.append(
                            f"every candidate's circuit was open; sent one probe to {last.key}"
                        )
                continue
            budget = min(
                self.catalog.provider_timeouts.get(
                    cand.provider, self.settings.attempt_timeout_seconds
                ),
                avail,
            )
            # Hold time back only for a follower that could actually be called.
            nxt = next(
                (
                    c
                    for c in queue[i:]
                    if self.breakers.get(c.provider).retry_at is None
                    and self.breakers.get(c.provider, c.provider_model).retry_at is None
                ),
                None,
            )
            if nxt is not None:
                nxt_typical = self.breakers.get(nxt.provider, nxt.provider_model).latency_quantile(
                    0.95, min_samples=5
                )
                hold = min(avail / 2, max(self.settings.min_attempt_seconds, nxt_typical or 0.0))
                budget = min(budget, avail - hold)
            result = await self._attempt(cand, norm, permits, budget, events, span, state)
            if result.outcome == router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
                assert result.response is not None
                self.throttle.on_success()
                success = (cand, result.response)
                break
            if not result.failover or (
                result.outcome == router_pb2.ATTEMPT_OUTCOME_MODERATED
                and not norm.request.allow_moderation_failover
            ):
                stop = result
                break
            if result.scope and not self.throttle.on_failure() and i < len(queue):
                # Most attempts are failing everywhere: stop multiplying load on the fleet.
                plan.notices.append("failover budget exhausted")
                stop = result
                stop.message += " (failover budget exhausted; not trying further providers)"
                break
            nxt_cand = next((c for c in queue[i:]), None)
            if nxt_cand is not None:
                attrs = {"from": cand.key, "to": nxt_cand.key, "reason": result.reason}
                span.add_event("failover", attrs)
                if events is not None:
                    events.emit(
                        failover=router_pb2.Failover(
                            from_provider=cand.provider,
                            to_provider=nxt_cand.provider,
                            reason=result.reason,
                        )
                    )
        if success is None:
            raise await self._all_failed(norm, plan, caller, reservation, deadline, stop, state)
        cand, resp = success
        return await self._settle_success(
            cand, resp, norm, plan, caller, reservation, deadline, span, state
        )

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

    async def _attempt(
        self,
        cand: Candidate,
        norm: Normalized,
        permits: tuple[Permit, Permit],
        budget: float,
        events: EventSink | None,
        span: trace.Span,
        state: _RequestState,
    ) -> AttemptResult:
        number = len(state.attempts) + 1
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
                    budget=_duration(budget),
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
            state.adapter_seconds += elapsed
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
            latency=_duration(elapsed),
            attempt_number=number,
            billable=result.billable,
        )
        state.attempts.append(attempt)
        if result.billable and result.outcome != router_pb2.ATTEMPT_OUTCOME_SUCCEEDED:
            state.billable_failures.append((cand, attempt))
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

    # ---- settlement -------------------------------------------------------------------------

    def _billed(
        self, state: _RequestState, norm: Normalized
    ) -> tuple[list[metering_pb2.BilledAttempt], int]:
        billed: list[metering_pb2.BilledAttempt] = []
        total = 0
        t = norm.template
        for cand, attempt in state.billable_failures:
            usage = image_pb2.Usage(
                images=t.num_images, megapixels=t.width * t.height * t.num_images / 1e6
            )
            billed.append(
                metering_pb2.BilledAttempt(
                    provider=cand.provider,
                    provider_model=cand.provider_model,
                    attempt_number=attempt.attempt_number,
                    usage=usage,
                    succeeded=False,
                    note=f"{attempt.error_reason} after the provider accepted the job",
                )
            )
            total += self.pricer.usage_cost(cand.provider, cand.provider_model, usage) or 0
        return billed, total

    async def _settle_success(
        self,
        cand: Candidate,
        resp: provider_pb2.GenerateImageResponse,
        norm: Normalized,
        plan: RoutePlan,
        caller: Caller,
        reservation: quota_pb2.Reservation | None,
        deadline: Deadline,
        span: trace.Span,
        state: _RequestState,
    ) -> router_pb2.GenerateImageResponse:
        billed, failed_cost = self._billed(state, norm)
        usage = resp.usage
        billed.append(
            metering_pb2.BilledAttempt(
                provider=cand.provider,
                provider_model=cand.provider_model,
                attempt_number=len(state.attempts),
                usage=usage,
                succeeded=True,
            )
        )
        cost = (
            self.pricer.usage_cost(cand.provider, cand.provider_model, usage) or 0
        ) + failed_cost
        commit = None
        res_id = reservation.id if reservation is not None else ""
        if reservation is not None:
            # Quota refuses commits above the hold; Metering's ledger keeps the exact figure.
            commit = quota_pb2.CommitReservationRequest(
                reservation_id=reservation.id,
                images=min(usage.images, reservation.images),
                megapixels=min(usage.megapixels, reservation.megapixels),
                cost_micros=min(cost, reservation.cost_micros),
            )
        record = metering_pb2.RecordUsageRequest(
            request_id=norm.template.request_id,
            tenant_id=caller.tenant_id,
            model=cand.alias,
            outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
            attempts=billed,
            occurred_at=timestamp(state.accepted_at),
            trace_id=state.trace_id,
        )
        stored = await self._settle(SettlementOrder(res_id, commit, record), deadline, state)
        if stored is not None and stored.cost_micros:
            cost = stored.cost_micros
        state.provider, state.model, state.cost_micros = cand.provider, cand.alias, cost
        span.set_attribute("imagegate.provider", cand.provider)
        span.set_attribute("imagegate.model", cand.alias)
        span.set_attribute("imagegate.cost_micros", cost)
        span.set_attribute("imagegate.images", usage.images)
        span.set_attribute("imagegate.megapixels", usage.megapixels)
        self.metrics.cost.add(cost, {"provider": cand.provider, "model": cand.alias})
        return router_pb2.GenerateImageResponse(
            request_id=norm.template.request_id,
            images=resp.images,
            provider=cand.provider,
            model=cand.alias,
            provider_model=resp.model or cand.provider_model,
            cost_micros=cost,
            usage=usage,
            attempts=state.attempts,
            trace_id=state.trace_id,
            deviations=resp.deviations,
            notices=plan.notices,
            local_substitute=plan.local_substitute,
        )

    async def _settle_failure(
        self,
        norm: Normalized,
        caller: Caller,
        reservation: quota_pb2.Reservation | None,
        deadline: Deadline,
        state: _RequestState,
    ) -> None:
        billed, _ = self._billed(state, norm)
        record = None
        if billed:
            record = metering_pb2.RecordUsageRequest(
                request_id=norm.template.request_id,
                tenant_id=caller.tenant_id,
                model=norm.explicit_model or (norm.aliases[0] if norm.aliases else ""),
                outcome=metering_pb2.REQUEST_OUTCOME_FAILED,
                attempts=billed,
                occurred_at=timestamp(state.accepted_at),
                trace_id=state.trace_id,
            )
        res_id = reservation.id if reservation is not None else ""
        if res_id or record is not None:
            # A failed caller retries at once: its hold must be back before it hears of the
            # failure, or the retry could be refused for quota it no longer uses.
            await self._settle(SettlementOrder(res_id, None, record), deadline, state, strict=True)

    async def _settle(
        self,
        order: SettlementOrder,
        deadline: Deadline,
        state: _RequestState,
        *,
        strict: bool = False,
    ) -> metering_pb2.UsageRecord | None:
        """Commits or releases and records; never raises (the settler keeps what failed).

        Strict (setting or argument) waits for delivery and returns Metering's record; otherwise
        the order is only written ahead to the outbox here and delivered in the background.
        """
        state.settled = True
        timeout = max(self.settings.settle_margin_seconds, deadline.remaining())
        timeout = min(timeout, self.settings.dependency_timeout_seconds)
        try:
            if strict or self.settings.settle_before_reply:
                return await self.settler.settle(order, timeout=timeout)
            await self.settler.settle_in_background(
                order, key=state.tenant_id, timeout=self.settings.dependency_timeout_seconds
            )
        except Exception:
            log.exception("settlement failed", extra={"request_id": state.request_id})
        return None

    async def settled(self, tenant_id: str) -> None:
        """Read-your-writes: waits (bounded) for the tenant's settlements still in delivery."""
        if not await self.settler.wait_settled(tenant_id, self.settings.read_your_writes_seconds):
            log.warning(
                "settlements still in delivery; answering with what the ledgers have",
                extra={"tenant_id": tenant_id},
            )

    async def _all_failed(
        self,
        norm: Normalized,
        plan: RoutePlan,
        caller: Caller,
        reservation: quota_pb2.Reservation | None,
        deadline: Deadline,
        stop: AttemptResult | None,
        state: _RequestState,
    ) -> ImagegateError:
        await self._settle_failure(norm, caller, reservation, deadline, state)
        if not state.attempts:
            return self._no_candidate(plan, norm)
        compact = [
            {
                "n": a.attempt_number,
                "p": a.provider,
                "m": a.provider_model,
                "o": OUTCOME_NAME.get(a.outcome, "failed"),
                "r": a.error_reason,
                "ms": round(a.latency.ToNanoseconds() / 1e6, 1),
                **({"b": 1} if a.billable else {}),
            }
            for a in state.attempts
        ]
        meta = {
            "attempts": json.dumps(compact, separators=(",", ":")),
            "request_id": state.request_id,
        }
        summary = "; ".join(
            f"{a.provider}/{a.provider_model}: {a.error_reason}" for a in state.attempts
        )
        outcomes = {a.outcome for a in state.attempts}
        retry_after = None
        if stop is not None:
            code, reason = stop.code, stop.reason or reasons.ALL_PROVIDERS_FAILED
            msg = f"{stop.message} (attempts: {summary})"
        elif outcomes == {router_pb2.ATTEMPT_OUTCOME_TIMEOUT} or deadline.remaining() <= 0:
            code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, reasons.ALL_PROVIDERS_FAILED
            msg = f"no provider delivered within the deadline: {summary}"
        elif outcomes == {router_pb2.ATTEMPT_OUTCOME_MODERATED}:
            code, reason = grpc.StatusCode.FAILED_PRECONDITION, reasons.PROVIDER_CONTENT_MODERATED
            msg = f"every provider refused the content: {summary}"
        else:
            code, reason = grpc.StatusCode.UNAVAILABLE, reasons.ALL_PROVIDERS_FAILED
            msg = f"all {len(state.attempts)} attempts failed: {summary}"
            retry_after = 1.0
        return ImagegateError(
            code,
            reason,
            msg,
            domain=DOMAIN,
            metadata=meta,
            retry_after_seconds=retry_after,
            extra_details=list(state.attempts),
        )


@dataclass
class _RequestState:
    """What one request has done so far (for settlement, metrics and logs)."""

    trace_id: str = ""
    request_id: str = ""
    tenant_id: str = ""
    provider: str = ""
    model: str = ""
    cost_micros: int = 0
    adapter_seconds: float = 0.0
    settled: bool = False
    attempts: list[router_pb2.Attempt] = field(default_factory=list)
    billable_failures: list[tuple[Candidate, router_pb2.Attempt]] = field(default_factory=list)
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def classify(err: grpc.aio.AioRpcError) -> AttemptResult:
    """Maps an adapter failure to an outcome, a failover decision and a breaker scope."""
    parsed = parse_rpc_error(err)
    reason, code = parsed.reason, parsed.code
    billable = parsed.metadata.get(reasons.META_BILLABLE) == "true"
    message = parsed.message
    o = router_pb2
    if not reason:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return AttemptResult(
                o.ATTEMPT_OUTCOME_TIMEOUT,
                reasons.PROVIDER_TIMEOUT,
                message or "attempt timed out",
                scope="model",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if code == grpc.StatusCode.CANCELLED:
            return AttemptResult(
                o.ATTEMPT_OUTCOME_CANCELLED,
                "CANCELLED",
                message,
                failover=False,
                code=grpc.StatusCode.CANCELLED,
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return AttemptResult(
                o.ATTEMPT_OUTCOME_OVERLOADED, reasons.PROVIDER_CONCURRENCY_LIMITED, message
            )
        # Unreachable adapter or a transport failure: the whole provider is affected.
        return AttemptResult(
            o.ATTEMPT_OUTCOME_UNAVAILABLE,
            reasons.PROVIDER_UNAVAILABLE,
            message or code.name,
            scope="provider",
        )
    table: dict[str, tuple[int, str, bool]] = {
        reasons.PROVIDER_RATE_LIMITED: (o.ATTEMPT_OUTCOME_RATE_LIMITED, "provider", True),
        reasons.PROVIDER_CONCURRENCY_LIMITED: (o.ATTEMPT_OUTCOME_OVERLOADED, "", True),
        reasons.PROVIDER_UNAVAILABLE: (o.ATTEMPT_OUTCOME_UNAVAILABLE, "model", True),
        reasons.PROVIDER_TIMEOUT: (o.ATTEMPT_OUTCOME_TIMEOUT, "model", True),
        reasons.PROVIDER_BAD_RESPONSE: (o.ATTEMPT_OUTCOME_BAD_RESPONSE, "model", True),
        reasons.PROVIDER_CONTENT_MODERATED: (o.ATTEMPT_OUTCOME_MODERATED, "", True),
        reasons.PROVIDER_INVALID_REQUEST: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", False),
        reasons.PROVIDER_UNSUPPORTED_PARAMETER: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", True),
        reasons.UNKNOWN_MODEL: (o.ATTEMPT_OUTCOME_FAILED, "", True),
        reasons.PROVIDER_AUTH_FAILED: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "provider", True),
        reasons.PROVIDER_OUT_OF_CREDITS: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "provider", True),
        reasons.PROVIDER_DISABLED: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "", True),
        reasons.INVALID_ARGUMENT: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", False),
    }
    outcome, scope, failover = table.get(reason, (o.ATTEMPT_OUTCOME_FAILED, "model", True))
    retry_after = parsed.retry_after_seconds if reason == reasons.PROVIDER_RATE_LIMITED else None
    return AttemptResult(
        outcome,
        reason,
        message,
        billable=billable,
        retry_after=retry_after,
        scope=scope,
        failover=failover,
        code=code,
    )
