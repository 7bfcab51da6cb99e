"""Test support: controllable adapters and small Quota/Metering fakes, all over real gRPC."""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imagegate.common.v1 import catalog_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.main import start_adapter_server
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    PriceUnit,
    Progress,
    ProgressSink,
    SizeRule,
)
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2_grpc
from imagegate.telemetry import Telemetry, setup_telemetry
from services.local.render import derive_seed, render
from services.router.app import RouterApp
from services.router.config import RouterSettings
from services.router.prices import PriceMirror
from services.router.server import RouterHandle, start_router

HANG = "hang"
OK = "ok"
Action: TypeAlias = str | ProviderError | tuple[str, float] | Callable[[GenerationRequest], Any]


def spec(model_id: str, *, negative_prompt: bool = True, max_images: int = 4) -> ModelSpec:
    """A permissive model spec for a test adapter."""
    return ModelSpec(
        id=model_id,
        sizes=SizeRule(min_side=64, max_side=4096, multiple=1),
        max_images=max_images,
        negative_prompt=negative_prompt,
        price_unit=PriceUnit.IMAGE,
    )


class ControllableAdapter(Adapter):
    """An adapter whose next answers a test scripts: succeed, fail with a reason, hang, sleep."""

    def __init__(
        self,
        name: str,
        models: list[ModelSpec],
        *,
        enabled: bool = True,
        default: Action = OK,
        limit: int = 16,
    ) -> None:
        self.name = name
        self.limit = limit
        self.active = 0
        self.peak_active = 0
        self._models = models
        self._enabled = enabled
        self.default: Action = default
        self.script: list[Action] = []
        self.calls: list[GenerationRequest] = []
        self.cancelled = 0
        self.deadlines: list[float] = []
        self.progress_steps = 2

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value

    @property
    def max_concurrency(self) -> int:
        return self.limit

    def models(self) -> list[ModelSpec]:
        return self._models

    def then(self, *actions: Action) -> ControllableAdapter:
        """Queues answers for the next calls; the default answers after them."""
        self.script.extend(actions)
        return self

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        self.calls.append(request)
        self.deadlines.append(deadline.remaining())
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            return await self._generate(request, progress)
        finally:
            self.active -= 1

    async def _generate(
        self, request: GenerationRequest, progress: ProgressSink | None
    ) -> GenerationResult:
        action = self.script.pop(0) if self.script else self.default
        try:
            if progress is not None:
                for step in range(self.progress_steps):
                    await progress(
                        Progress(state="IN_QUEUE", queue_position=self.progress_steps - step)
                    )
            if callable(action):
                action = action(request)
            if isinstance(action, ProviderError):
                raise action
            if action == HANG:
                await asyncio.Event().wait()
            if isinstance(action, tuple):
                await asyncio.sleep(action[1])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        images = []
        for i in range(request.num_images):
            seed = derive_seed(request.prompt, request.negative_prompt, request.seed, i)
            data = render(
                request.prompt, request.width, request.height, seed, request.output_format, 4
            )
            images.append(
                GeneratedImage(data, request.output_format, request.width, request.height, seed)
            )
        return GenerationResult(images=images, provider_job_id=f"{self.name}-{len(self.calls)}")


class FaultInjector(grpc.aio.ServerInterceptor):
    """gRFC A33-style faults on a server: abort with a code and/or delay a share of calls."""

    def __init__(self) -> None:
        self.abort_code: grpc.StatusCode | None = None
        self.abort_percent = 0
        self.delay_seconds = 0.0
        self.delay_percent = 0
        self.max_active = 1_000_000
        self.active = 0
        self.injected = 0
        self._rng = random.Random(7)

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or "Describe" in details.method:
            return handler
        inner = handler.unary_unary

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # Each fault draws its own number, as A33 specifies.
            delay = self._rng.random() * 100 < self.delay_percent
            abort = self.abort_code is not None and self._rng.random() * 100 < self.abort_percent
            if (delay or abort) and self.active < self.max_active:
                self.active += 1
                self.injected += 1
                try:
                    if delay:
                        await asyncio.sleep(self.delay_seconds)
                    if abort:
                        assert self.abort_code is not None
                        await context.abort(self.abort_code, "injected fault")
                finally:
                    self.active -= 1
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class FaultyTelemetry(Telemetry):
    """Telemetry whose server interceptors put a FaultInjector first."""

    injector: FaultInjector | None = None

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        inner = super().server_interceptors()
        return [self.injector, *inner] if self.injector is not None else inner


def price(
    provider: str, model: str, micros: float, unit: int = catalog_pb2.PRICE_UNIT_IMAGE
) -> metering_pb2.Price:
    """A price entry for the fake catalog."""
    return metering_pb2.Price(
        id=f"{provider}/{model}@test",
        provider=provider,
        provider_model=model,
        unit=unit,  # type: ignore[arg-type]
        unit_price_micros=micros,
    )


@dataclass
class FakeTenant:
    """A tenant known to FakeQuota."""

    tenant: quota_pb2.Tenant
    plan: quota_pb2.Plan
    used_images: int = 0
    used_cost_micros: int = 0
    reserved_images: int = 0


class FakeQuota(quota_pb2_grpc.QuotaServiceServicer):
    """In-memory QuotaService with the real contract's idempotency and reservation states."""

    def __init__(self) -> None:
        self.keys: dict[str, FakeTenant] = {}
        self.reservations: dict[str, quota_pb2.Reservation] = {}
        self._by_request: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)
        self.down = False
        self.calls: dict[str, int] = {}
        self.fail_next = 0
        """Answer this many next ReserveQuota calls with UNAVAILABLE."""
        self.pushback_ms: str | None = None
        """grpc-retry-pushback-ms trailer sent with those failures."""
        self.reserve_metadata: list[dict[str, str]] = []

    def add_key(
        self, key: str, tenant_id: str, plan: str = "pro", tiers: tuple[str, ...] = ()
    ) -> None:
        """Registers an API key for a tenant on a plan."""
        self.keys[key] = FakeTenant(
            quota_pb2.Tenant(id=tenant_id, name=tenant_id, plan=plan),
            quota_pb2.Plan(id=plan, display_name=plan, allowed_tiers=list(tiers)),
        )

    def _count(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    async def _check_up(self, context: grpc.aio.ServicerContext) -> None:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "quota down (test)")

    def _auth(self, key: str) -> FakeTenant:
        t = self.keys.get(key)
        if t is None:
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_INVALID,
                "unknown API key",
                domain="imagegate.quota",
            )
        return t

    def tenant(self, tenant_id: str) -> FakeTenant:
        """The tenant record."""
        return next(t for t in self.keys.values() if t.tenant.id == tenant_id)

    async def AuthenticateApiKey(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._count("AuthenticateApiKey", context)
        await self._check_up(context)
        t = self._auth(request.api_key)
        return quota_pb2.AuthenticateApiKeyResponse(tenant=t.tenant, plan=t.plan, key_id="k_test")

    async def ReserveQuota(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._count("ReserveQuota", context)
        self.reserve_metadata.append(
            {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        )
        if self.fail_next > 0:
            self.fail_next -= 1
            if self.pushback_ms is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback_ms),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "quota restarting (test)")
        await self._check_up(context)
        t = self._auth(request.api_key)
        key = (t.tenant.id, request.request_id)
        rid = self._by_request.get(key)
        if rid is None:
            rid = f"res_{next(self._ids)}"
            self._by_request[key] = rid
            self.reservations[rid] = quota_pb2.Reservation(
                id=rid,
                tenant_id=t.tenant.id,
                request_id=request.request_id,
                images=request.images,
                megapixels=request.megapixels,
                cost_micros=request.cost_micros,
                period="2026-11",
                state=quota_pb2.RESERVATION_STATE_PENDING,
            )
            t.reserved_images += request.images
        return quota_pb2.ReserveQuotaResponse(
            reservation=self.reservations[rid], tenant=t.tenant, plan=t.plan, key_id="k_test"
        )

    async def CommitReservation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._count("CommitReservation", context)
        await self._check_up(context)
        r = self.reservations[request.reservation_id]
        if r.state == quota_pb2.RESERVATION_STATE_PENDING:
            if request.images > r.images or request.cost_micros > r.cost_micros:
                raise ImagegateError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reasons.COMMIT_EXCEEDS_RESERVATION,
                    "commit exceeds reservation",
                    domain="imagegate.quota",
                )
            t = self.tenant(r.tenant_id)
            t.reserved_images -= r.images
            t.used_images += request.images
            t.used_cost_micros += request.cost_micros
            r.state = quota_pb2.RESERVATION_STATE_COMMITTED
        return quota_pb2.CommitReservationResponse(reservation=r)

    async def ReleaseReservation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._count("ReleaseReservation", context)
        await self._check_up(context)
        r = self.reservations[request.reservation_id]
        if r.state == quota_pb2.RESERVATION_STATE_PENDING:
            self.tenant(r.tenant_id).reserved_images -= r.images
            r.state = quota_pb2.RESERVATION_STATE_RELEASED
        return quota_pb2.ReleaseReservationResponse(reservation=r)

    async def GetQuota(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._count("GetQuota", context)
        t = self.tenant(request.tenant_id)
        return quota_pb2.GetQuotaResponse(
            quota=quota_pb2.QuotaStatus(
                tenant=t.tenant,
                plan=t.plan,
                period="2026-11",
                used_images=t.used_images,
                reserved_images=t.reserved_images,
                remaining_images=-1,
                used_cost_micros=t.used_cost_micros,
            )
        )


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """In-memory MeteringService: prices from a given catalog, idempotent ledger."""

    def __init__(self, prices: list[metering_pb2.Price]) -> None:
        self.prices = prices
        self.records: dict[tuple[str, str], metering_pb2.UsageRecord] = {}
        self.record_calls = 0
        self.down = False

    async def ListPrices(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "metering down (test)")
        return metering_pb2.ListPricesResponse(catalog_version="test", prices=self.prices)

    async def RecordUsage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.record_calls += 1
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "metering down (test)")
        key = (request.tenant_id, request.request_id)
        if key in self.records:
            return metering_pb2.RecordUsageResponse(record=self.records[key], created=False)
        mirror = PriceMirror(self.prices)
        record = metering_pb2.UsageRecord(
            request_id=request.request_id,
            tenant_id=request.tenant_id,
            model=request.model,
            outcome=request.outcome,
            trace_id=request.trace_id,
            period="2026-11",
            occurred_at=request.occurred_at,
        )
        for a in request.attempts:
            billed = record.attempts.add()
            billed.CopyFrom(a)
            billed.cost_micros = mirror.usage_cost(a.provider, a.provider_model, a.usage) or 0
            record.cost_micros += billed.cost_micros
            if a.succeeded:
                record.provider, record.provider_model = a.provider, a.provider_model
                record.images, record.megapixels = a.usage.images, a.usage.megapixels
        self.records[key] = record
        return metering_pb2.RecordUsageResponse(record=record, created=True)

    async def GetUsageSummary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        mine = [r for (t, _), r in self.records.items() if t == request.tenant_id]
        return metering_pb2.GetUsageSummaryResponse(
            summary=metering_pb2.UsageSummary(
                tenant_id=request.tenant_id,
                period=request.period or "2026-11",
                requests=len(mine),
                images=sum(r.images for r in mine),
                cost_micros=sum(r.cost_micros for r in mine),
            )
        )

    async def ListUsageRecords(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        mine = [r for (t, _), r in self.records.items() if t == request.tenant_id]
        return metering_pb2.ListUsageRecordsResponse(records=mine)


@dataclass
class RouterStack:
    """A Router with fake Quota/Metering and controllable adapters, all on loopback."""

    router: RunningServer
    app: RouterApp
    handle: RouterHandle
    quota: FakeQuota
    metering: FakeMetering
    adapters: dict[str, ControllableAdapter | Adapter]
    spans: InMemorySpanExporter
    telemetry: Telemetry
    metrics: InMemoryMetricReader
    servers: list[RunningServer] = field(default_factory=list)
    channel: grpc.aio.Channel | None = None

    def metric_points(self) -> dict[str, list[Any]]:
        """Every recorded metric point, by instrument name."""
        out: dict[str, list[Any]] = {}
        data = self.metrics.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.data.data_points)
        return out

    @property
    def stub(self) -> router_pb2_grpc.RouterServiceStub:
        """A Router stub on a shared channel."""
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.router.address)
        return router_pb2_grpc.RouterServiceStub(self.channel)

    async def stop(self) -> None:
        """Stops everything started."""
        if self.channel is not None:
            await self.channel.close()
        await self.handle.stop(grace=0.5)
        for server in self.servers:
            await server.stop(grace=0.1)
        self.telemetry.shutdown()


async def start_stack(
    adapters: dict[str, ControllableAdapter | Adapter],
    *,
    prices: list[metering_pb2.Price] | None = None,
    clock: Callable[[], float] | None = None,
    dead_adapters: dict[str, str] | None = None,
    faults: dict[str, FaultInjector] | None = None,
    **settings: Any,
) -> RouterStack:
    """Starts fakes, adapters and a Router configured for them (settings override defaults)."""
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("router-test", span_exporters=[exporter])
    reader = InMemoryMetricReader()
    telemetry.meter_provider = MeterProvider(metric_readers=[reader])
    # The fakes implement only the RPCs the Router calls.
    quota = FakeQuota()  # type: ignore[abstract]
    metering = FakeMetering(prices or [])  # type: ignore[abstract]
    quota.add_key("key-pro", "t_pro", "pro")
    quota.add_key("key-free", "t_free", "free", ("budget",))
    servers = [
        await start_server(
            address="127.0.0.1:0",
            registrars=[lambda s: quota_pb2_grpc.add_QuotaServiceServicer_to_server(quota, s)],
            service_names=["imagegate.quota.v1.QuotaService"],
            domain="imagegate.quota",
        ),
        await start_server(
            address="127.0.0.1:0",
            registrars=[
                lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(metering, s)
            ],
            service_names=["imagegate.metering.v1.MeteringService"],
            domain="imagegate.metering",
        ),
    ]
    adapter_telemetry = setup_telemetry("adapter-test", span_exporters=[exporter])
    targets = []
    for name, adapter in adapters.items():
        tel: Telemetry = adapter_telemetry
        if faults and name in faults:
            tel = FaultyTelemetry(
                adapter_telemetry.service_name,
                adapter_telemetry.tracer_provider,
                adapter_telemetry.meter_provider,
                injector=faults[name],
            )
        running, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=tel)
        servers.append(running)
        targets.append(f"{name}={running.address}")
    for name, target in (dead_adapters or {}).items():
        targets.append(f"{name}={target}")
    values: dict[str, Any] = {
        "adapters": ",".join(targets),
        "quota_addr": servers[0].address,
        "metering_addr": servers[1].address,
        "describe_interval_seconds": 3600.0,
        "price_refresh_seconds": 3600.0,
        "data_dir": tempfile.mkdtemp(prefix="imagegate-router-"),
        # Tests read the fakes' ledgers directly, without the Router's read-your-writes wait;
        # strict settlement makes them final when the reply arrives. Pass False to test the
        # background mode.
        "settle_before_reply": True,
        **settings,
    }
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    router, app, handle = await start_router(
        RouterSettings(**values), telemetry, address="127.0.0.1:0", **kwargs
    )
    return RouterStack(
        router=router,
        app=app,
        handle=handle,
        quota=quota,
        metering=metering,
        adapters=adapters,
        spans=exporter,
        telemetry=telemetry,
        metrics=reader,
        servers=servers,
    )


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata with an API key."""
    return (("authorization", f"Bearer {key}"),)


def now_ts() -> timestamp_pb2.Timestamp:
    """A Timestamp for now."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
