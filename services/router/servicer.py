"""RouterService servicer: thin gRPC glue over RouterApp."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.auth import bearer_token
from imagegate.grpckit.errors import (
    FieldViolation,
    ImagegateError,
    from_parsed,
    invalid_argument,
    parse_rpc_error,
    timestamp,
)
from imagegate.metering.v1 import metering_pb2
from imagegate.provider.v1 import provider_pb2
from imagegate.quota.v1 import quota_pb2
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from services.router.admission import Caller
from services.router.app import RouterApp
from services.router.breaker import BreakerState
from services.router.catalog import TIERS
from services.router.events import EventSink, duration
from services.router.validation import check_request_id, normalize

BREAKER_PROTO = {
    BreakerState.CLOSED: router_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: router_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: router_pb2.BREAKER_STATE_HALF_OPEN,
}


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """Implements RouterService."""

    def __init__(self, app: RouterApp) -> None:
        self._app = app
        self._admin_token = app.settings.admin_token.encode()

    def _is_admin(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether the caller presented the admin token (constant-time compare)."""
        token = bearer_token(context)
        return (
            bool(self._admin_token)
            and token is not None
            and hmac.compare_digest(token.encode(), self._admin_token)
        )

    async def GenerateImage(
        self, request: router_pb2.GenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GenerateImageResponse:
        return await self._app.generate(request, context)

    async def StreamGenerateImage(
        self, request: router_pb2.StreamGenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.StreamGenerateImageResponse]:
        sink = EventSink()
        task = asyncio.ensure_future(self._app.generate(request.request, context, sink))
        # The RPC can end (client cancel) while this generator is parked at a `yield`, where no
        # CancelledError reaches it until it is garbage-collected: stop the work when the RPC ends.
        context.add_done_callback(lambda _: task.cancel())
        getter: asyncio.Future[router_pb2.StreamGenerateImageResponse | None] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(sink.queue.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event = getter.result()
                    if event is not None:
                        yield event
                    continue
                getter.cancel()
                while not sink.queue.empty():
                    event = sink.queue.get_nowait()
                    if event is not None:
                        yield event
                result = task.result()
                yield router_pb2.StreamGenerateImageResponse(
                    elapsed_seconds=time.monotonic() - sink.started, result=result
                )
                return
        finally:
            # A client cancellation lands in asyncio.wait with the getter still pending; left
            # alone it is destroyed pending when the sink is collected.
            if getter is not None:
                getter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        caller = await self._app.authenticate(context)
        app = self._app
        tiers = set(caller.plan.allowed_tiers)
        hosted = app.adapters.hosted_enabled()
        out = router_pb2.ListModelsResponse()
        for entry in app.catalog.models.values():
            serving: list[provider_pb2.ProviderModel] = []
            providers = []
            for c in entry.candidates:
                a = app.adapters.get(c.provider)
                if a is not None and a.enabled and c.provider_model in a.models:
                    serving.append(a.models[c.provider_model])
                    providers.append(c.provider)
            local_sub = False
            if not providers and not hosted:
                local = app.adapters.get(app.catalog.local_provider)
                if local is not None and local.enabled:
                    providers, local_sub = [app.catalog.local_provider], True
                    described = local.models.get(app.catalog.local_model)
                    serving = [described] if described is not None else []
            out.models.add(
                alias=entry.alias,
                description=entry.description,
                tier=TIERS[entry.tier],
                # The adapter owns capabilities; the alias shows those of the candidate tried first.
                capabilities=serving[0].capabilities if serving else None,
                providers=providers,
                # The alias's tier decides, whoever serves it (the local stand-in included).
                allowed_by_plan=not tiers or entry.tier in tiers,
                local_substitute=local_sub,
            )
        return out

    async def ListStyles(
        self, request: router_pb2.ListStylesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListStylesResponse:
        await self._app.authenticate(context)
        return router_pb2.ListStylesResponse(
            styles=[s.to_proto() for s in self._app.catalog.styles.values()]
        )

    async def EstimateCost(
        self, request: router_pb2.EstimateCostRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.EstimateCostResponse:
        caller = await self._app.authenticate(context)
        app = self._app
        norm = normalize(request.request, app.catalog, app.input_limits)
        plan = app.planner.static_plan(norm)
        tiers = set(caller.plan.allowed_tiers)
        out = router_pb2.EstimateCostResponse()
        ceiling = request.request.max_cost_micros
        for cand in plan.candidates:
            q = app.planner.quote(cand, norm)
            skip = ""
            tier = "budget" if cand.provider == app.catalog.local_provider else cand.tier
            if tiers and tier not in tiers:
                skip = f"plan {caller.plan.id} excludes tier {tier}"
            elif ceiling > 0 and (q is None or q > ceiling):
                skip = "over max_cost_micros" if q is not None else "price unknown"
            else:
                pb = app.breakers.get(cand.provider)
                mb = app.breakers.get(cand.provider, cand.provider_model)
                if pb.retry_at is not None or mb.retry_at is not None:
                    skip = "circuit open"
            out.candidates.add(
                provider=cand.provider,
                model=cand.alias,
                provider_model=cand.provider_model,
                cost_micros=q or 0,
                price_unit=app.pricer.unit(cand.provider, cand.provider_model),
                skip_reason=skip,
            )
        for s in plan.skipped:
            out.candidates.add(
                provider=s.candidate.provider,
                model=s.candidate.alias,
                provider_model=s.candidate.provider_model,
                cost_micros=app.planner.quote(s.candidate, norm) or 0,
                price_unit=app.pricer.unit(s.candidate.provider, s.candidate.provider_model),
                skip_reason=s.text,
            )
        first = next((c for c in out.candidates if not c.skip_reason), None)
        out.expected_cost_micros = first.cost_micros if first is not None else 0
        return out

    async def GetProviderStatus(
        self, request: router_pb2.GetProviderStatusRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetProviderStatusResponse:
        # Error rates, in-flight counts, latencies and error reasons describe every tenant's
        # traffic and our providers' accounts: the admin token sees them; a tenant key sees
        # whether each provider and model is usable now and when a closed one retries.
        admin = self._is_admin(context)
        visible: tuple[set[tuple[str, str]], set[str]] | None = None
        if not admin:
            visible = self._visible_to(await self._app.authenticate(context))
        app = self._app
        out = router_pb2.GetProviderStatusResponse(replica_id=app.replica_id if admin else "")
        for a in app.adapters.all():
            app.breakers.get(a.name)
        wall_offset = time.time() - app.clock()
        for (provider, model), breaker in app.breakers.items():
            snap = breaker.snapshot()
            adapter = app.adapters.get(provider)
            if visible is not None:
                models, providers = visible
                if (provider, model) not in models and not (not model and provider in providers):
                    continue  # a model the tenant's plan may not use does not affect it
                status = out.providers.add(
                    provider=provider,
                    provider_model=model,
                    enabled=bool(adapter and adapter.enabled),
                    state=BREAKER_PROTO[snap.state],
                )
                if snap.retry_at is not None:
                    status.retry_at.CopyFrom(
                        timestamp(datetime.fromtimestamp(snap.retry_at + wall_offset, UTC))
                    )
                continue
            status = out.providers.add(
                provider=provider,
                provider_model=model,
                enabled=bool(adapter and adapter.enabled),
                state=BREAKER_PROTO[snap.state],
                error_rate=snap.error_rate,
                window_calls=snap.window_calls,
                in_flight=snap.in_flight,
                trips=snap.trips,
                last_error_reason=snap.last_error_reason
                or (adapter.last_error if adapter and not model else ""),
            )
            if snap.latency_p50 is not None:
                status.latency_p50.CopyFrom(duration(snap.latency_p50))
            if snap.latency_p95 is not None:
                status.latency_p95.CopyFrom(duration(snap.latency_p95))
            if snap.retry_at is not None:
                status.retry_at.CopyFrom(
                    timestamp(datetime.fromtimestamp(snap.retry_at + wall_offset, UTC))
                )
        return out

    def _visible_to(self, caller: Caller) -> tuple[set[tuple[str, str]], set[str]]:
        """The (provider, model) pairs and providers the caller's plan may route to."""
        catalog = self._app.catalog
        tiers = set(caller.plan.allowed_tiers)
        models: set[tuple[str, str]] = set()
        for entry in catalog.models.values():
            for cand in entry.candidates:
                # As planning rules: the local stand-in counts as budget.
                tier = "budget" if cand.provider == catalog.local_provider else cand.tier
                if not tiers or tier in tiers:
                    models.add((cand.provider, cand.provider_model))
        return models, {provider for provider, _ in models} | {catalog.local_provider}

    async def GetUsageSummary(
        self, request: router_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetUsageSummaryResponse:
        caller = await self._app.authenticate(context)
        await self._app.settled(caller.tenant_id)
        try:
            resp = await self._app.metering.GetUsageSummary(
                metering_pb2.GetUsageSummaryRequest(
                    tenant_id=caller.tenant_id, period=request.period
                ),
                timeout=_timeout(context, self._app.settings.dependency_timeout_seconds),
                # A read may wait out a reconnect (e.g. Metering just restarted) within its
                # timeout instead of failing at once while the channel backs off.
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as err:
            raise from_parsed(parse_rpc_error(err)) from None
        return router_pb2.GetUsageSummaryResponse(summary=resp.summary)

    async def ListUsageRecords(
        self, request: router_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListUsageRecordsResponse:
        caller = await self._app.authenticate(context)
        await self._app.settled(caller.tenant_id)
        try:
            resp = await self._app.metering.ListUsageRecords(
                metering_pb2.ListUsageRecordsRequest(
                    tenant_id=caller.tenant_id,
                    period=request.period,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
                timeout=_timeout(context, self._app.settings.dependency_timeout_seconds),
                # A read may wait out a reconnect (e.g. Metering just restarted) within its
                # timeout instead of failing at once while the channel backs off.
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as err:
            raise from_parsed(parse_rpc_error(err)) from None
        return router_pb2.ListUsageRecordsResponse(
            records=resp.records, next_page_token=resp.next_page_token
        )

    async def GetQuota(
        self, request: router_pb2.GetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetQuotaResponse:
        caller = await self._app.authenticate(context)
        await self._app.settled(caller.tenant_id)
        try:
            resp = await self._app.quota.GetQuota(
                quota_pb2.GetQuotaRequest(tenant_id=caller.tenant_id),
                timeout=_timeout(context, self._app.settings.dependency_timeout_seconds),
                # A read may wait out a reconnect (e.g. Metering just restarted) within its
                # timeout instead of failing at once while the channel backs off.
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as err:
            raise from_parsed(parse_rpc_error(err)) from None
        return router_pb2.GetQuotaResponse(quota=resp.quota)

    async def GetGeneration(
        self, request: router_pb2.GetGenerationRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetGenerationResponse:
        violations: list[FieldViolation] = []
        check_request_id(violations, request.request_id, required=True)
        if violations:
            raise invalid_argument(violations, domain="imagegate.router")
        caller = await self._app.authenticate(context)
        found = await self._app.generations.find(caller.tenant_id, request.request_id, None)
        if found is None:
            raise _generation_missing(request.request_id)
        response, expires = found
        return router_pb2.GetGenerationResponse(generation=response, expire_time=timestamp(expires))


def _generation_missing(request_id: str) -> ImagegateError:
    return ImagegateError(
        grpc.StatusCode.NOT_FOUND,
        reasons.GENERATION_NOT_FOUND,
        f"no finished generation with request_id {request_id!r} for this tenant (it never ran, "
        "is still running, failed without a stored result, or its retention has passed)",
        domain="imagegate.router",
        metadata={"request_id": request_id},
    )


def _timeout(context: grpc.aio.ServicerContext, cap: float) -> float:
    remaining = context.time_remaining()
    return cap if remaining is None else max(0.001, min(cap, remaining))
