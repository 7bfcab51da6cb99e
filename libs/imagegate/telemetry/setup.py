"""Builds one service's tracer and meter providers from the standard OTEL_* variables."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    DEFAULT_ON,
    Decision,
    Sampler,
    SamplingResult,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.telemetry.interceptors import (
    DURATION_BUCKETS,
    ServerTelemetryInterceptor,
    TracedStub,
    client_interceptors,
)
from imagegate.telemetry.redact import redact

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)
StubT = TypeVar("StubT")

# Default Prometheus scrape addresses: the gRPC port table (docs/contributing.md) shifted to 94xx.
DEFAULT_METRICS_ADDRS: dict[str, str] = {
    "router": "127.0.0.1:9464",
    "quota": "127.0.0.1:9465",
    "metering": "127.0.0.1:9466",
    "local": "127.0.0.1:9470",
    "fal": "127.0.0.1:9471",
    "hf": "127.0.0.1:9472",
    "replicate": "127.0.0.1:9473",
    "bfl": "127.0.0.1:9474",
    "openai": "127.0.0.1:9475",
    "together": "127.0.0.1:9476",
    "enhancer": "127.0.0.1:9480",
    "diffusers": "127.0.0.1:9477",
    "comfyui": "127.0.0.1:9478",
}
# Adapter names whose environment prefix differs from the provider name.
_ENV_ALIASES = {"huggingface": "hf"}


class TelemetrySettings(BaseSettings):
    """IMAGEGATE_TELEMETRY_* variables (exporters themselves use the standard OTEL_* ones)."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGATE_TELEMETRY_", extra="ignore", frozen=True
    )

    record_prompts: bool = Field(
        default=False,
        description="Put the (truncated, redacted) prompt on the Router's request span.",
    )
    prompt_max_chars: int = Field(
        default=200, ge=0, description="Prompt characters kept when recorded."
    )


def env_key(service_name: str) -> str:
    """The IMAGEGATE_<KEY>_ part for a service: "router" -> ROUTER, "adapter-huggingface" -> HF."""
    name = service_name.removeprefix("adapter-")
    return _ENV_ALIASES.get(name, name).upper().replace("-", "_")


def metrics_address(service_name: str, environ: dict[str, str] | None = None) -> str:
    """IMAGEGATE_<KEY>_METRICS_ADDR, else the default for the service; "" disables the endpoint."""
    env = os.environ if environ is None else environ
    key = env_key(service_name)
    value = env.get(f"IMAGEGATE_{key}_METRICS_ADDR")
    if value is not None:
        return value.strip()
    return DEFAULT_METRICS_ADDRS.get(key.lower(), "")


def _enabled(exporter_var: str, *endpoint_vars: str) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get(exporter_var, "otlp").strip().lower() in ("none", ""):
        return False
    return any(os.environ.get(v, "").strip() for v in endpoint_vars)


def _check_protocol() -> None:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip().lower()
    if protocol not in ("grpc", ""):
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not installed; exporting OTLP/gRPC instead",
            protocol,
        )


class ExportAwareSampler(Sampler):
    """parentbased_always_on while something exports spans; samples nothing while nothing does.

    Without an exporter, an entry span (no parent, or a remote one) is RECORD_ONLY and every
    span under it is dropped: trace ids still exist, are returned to callers and propagated
    (flag 00) to every hop for log correlation, but no child spans, client spans or attributes
    are built for nobody (~15-20 us each). Used only when OTEL_TRACES_SAMPLER is not set.
    """

    def __init__(self) -> None:
        self.exporting = False
        self._inner = DEFAULT_ON

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if self.exporting:
            return self._inner.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        parent = trace.get_current_span(parent_context).get_span_context()
        if parent.is_valid and not parent.is_remote:
            return SamplingResult(Decision.DROP, None, parent.trace_state)
        return SamplingResult(
            Decision.RECORD_ONLY, None, parent.trace_state if parent.is_valid else None
        )

    def get_description(self) -> str:
        return f"ExportAware{{{self._inner.get_description()}}}"


class _TracerProvider(TracerProvider):
    """Tells the export-aware sampler when a span processor (an exporter) is added."""

    def __init__(self, resource: Resource, sampler: ExportAwareSampler | None) -> None:
        super().__init__(resource=resource, sampler=sampler)
        self._export_aware = sampler

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if self._export_aware is not None:
            self._export_aware.exporting = True


@dataclass
class MetricsEndpoint:
    """A running Prometheus scrape endpoint."""

    host: str
    """Bound host."""
    port: int
    """Bound port (the real one when asked for port 0)."""
    server: Any
    """The prometheus_client WSGI server."""
    thread: threading.Thread
    """Its serving thread."""

    def close(self) -> None:
        """Stops serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class Telemetry:
    """A service's telemetry: providers owned by this process, never the global ones."""

    service_name: str
    """Short name ("router", "quota", "adapter-fal"); `service.name` is imagegate-<this>."""
    tracer_provider: TracerProvider
    """Where this service's spans go."""
    meter_provider: MeterProvider
    """Where this service's metrics go."""
    processors: list[SpanProcessor] = field(default_factory=list)
    """Span processors added at setup (exporters)."""
    settings: TelemetrySettings = field(default_factory=lambda: TelemetrySettings())
    """Prompt recording switches; the Router reads them."""
    metrics_endpoint: MetricsEndpoint | None = None
    """The Prometheus scrape endpoint, when one was asked for."""
    metric_readers: list[MetricReader] = field(default_factory=list)
    """Metric readers attached at setup."""
    _closed: bool = False

    @cached_property
    def tracer(self) -> trace.Tracer:
        """Tracer for business spans."""
        return self.tracer_provider.get_tracer("imagegate." + self.service_name)

    @cached_property
    def meter(self) -> metrics.Meter:
        """Meter for business metrics."""
        return self.meter_provider.get_meter("imagegate." + self.service_name)

    @cached_property
    def _server_interceptor(self) -> ServerTelemetryInterceptor:
        return ServerTelemetryInterceptor(
            self.tracer_provider.get_tracer("imagegate.grpc"),
            self.meter_provider.get_meter("imagegate.grpc"),
        )

    @property
    def record_prompts(self) -> bool:
        """Whether prompts may be recorded on spans (IMAGEGATE_TELEMETRY_RECORD_PROMPTS)."""
        return self.settings.record_prompts

    def prompt_attributes(self, prompt: str) -> dict[str, str | int]:
        """Span attributes for a prompt: its length always, the text only when enabled."""
        attrs: dict[str, str | int] = {"imagegate.prompt.length": len(prompt)}
        if self.settings.record_prompts:
            attrs["imagegate.prompt"] = redact(prompt[: self.settings.prompt_max_chars])
        return attrs

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Server span per RPC, continuing the caller's W3C trace; health checks untraced."""
        return [self._server_interceptor]

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Client span per outgoing RPC, injecting the current context (not the incoming one)."""
        return client_interceptors(
            self.tracer_provider.get_tracer(
                "opentelemetry.instrumentation.grpc",
                schema_url="https://opentelemetry.io/schemas/1.11.0",
            )
        )

    def traced_stub(self, stub: StubT, service: str) -> StubT:
        """`stub` with client tracing built in; dial its channel without client_interceptors().

        `service` is the full service name ("imagegate.quota.v1.QuotaService").
        """
        tracer = self.tracer_provider.get_tracer(
            "opentelemetry.instrumentation.grpc",
            schema_url="https://opentelemetry.io/schemas/1.11.0",
        )
        return cast(StubT, TracedStub(stub, service, tracer))

    def instrument_httpx(self, client: httpx.AsyncClient | httpx.Client) -> None:
        """Client spans (children of the current span) and http.client.* metrics for `client`."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def instrument_sqlalchemy(self, engine: AsyncEngine | Engine) -> None:
        """Spans per statement (SQL text, never bound parameters) for one engine."""
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.semconv.metrics import MetricInstruments

        # AsyncEngine wraps a sync one; importing its class would need greenlet.
        sync_engine = getattr(engine, "sync_engine", engine)
        meter = self.meter_provider.get_meter("imagegate.sqlalchemy")
        # SQLAlchemyInstrumentor patches create_engine globally and only once per process;
        # EngineTracer binds one engine to this service's providers.
        EngineTracer(
            self.tracer_provider.get_tracer("imagegate.sqlalchemy"),
            sync_engine,
            meter.create_up_down_counter(
                MetricInstruments.DB_CLIENT_CONNECTIONS_USAGE,
                unit="connections",
                description="Connections currently in the state named by `state`.",
            ),
        )

    def shutdown(self) -> None:
        """Flushes and stops exporters and the scrape endpoint; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def current_trace_id() -> str:
    """The current span's trace id as 32 hex characters, or "" outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def _start_metrics_endpoint(address: str, registry: Any, service_name: str) -> MetricsEndpoint:
    from prometheus_client import start_http_server

    from imagegate.grpckit.address import check_address
    from imagegate.grpckit.errors import ImagegateError

    variable = f"IMAGEGATE_{env_key(service_name)}_METRICS_ADDR"
    try:
        check_address(address, variable=variable, allow_zero=True)
    except ImagegateError as err:
        raise RuntimeError(err.message) from None
    host, _, port = address.rpartition(":")
    try:
        server, thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    except OSError as err:
        # Moving only the gRPC port of a second stack lands here: say which variable to move.
        raise RuntimeError(
            f"metrics endpoint {address} is not free ({err.strerror}): set {variable} to "
            'another host:port, or to "" to serve no metrics'
        ) from None
    return MetricsEndpoint(host or "127.0.0.1", server.server_port, server, thread)


def setup_telemetry(
    service_name: str,
    *,
    span_exporters: list[SpanExporter] | None = None,
    metric_readers: list[MetricReader] | None = None,
    metrics_addr: str | None = None,
    settings: TelemetrySettings | None = None,
) -> Telemetry:
    """Telemetry for one service, with its own providers (several services may share a process).

    Spans and metrics are exported over OTLP/gRPC only when OTEL_EXPORTER_OTLP_ENDPOINT (or the
    signal-specific variable) is set and OTEL_{TRACES,METRICS}_EXPORTER is not "none";
    `span_exporters` / `metric_readers` add more (tests pass in-memory ones).
    `metrics_addr` ("host:port", port 0 picks one) serves Prometheus text on /metrics; mains
    pass `metrics_address(name)`, libraries and tests leave it None (no listener).
    Sampling follows OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, read by the SDK; unset, it
    is parentbased_always_on while any span exporter is attached (a caller's sampled flag is
    honoured) and drops everything while none is (trace ids are still made and propagated).
    """
    # Stable HTTP semconv (http.client.request.duration, url.full); process-wide, read once.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    resource = Resource.create(
        {
            "service.name": f"imagegate-{service_name}",
            "service.namespace": "imagegate",
            "service.instance.id": str(uuid.uuid4()),
        }
    )
    # An explicit OTEL_TRACES_SAMPLER is honoured as is (read by the SDK); otherwise spans are
    # recorded only while an exporter is attached.
    explicit = os.environ.get("OTEL_TRACES_SAMPLER", "").strip()
    tracer_provider = _TracerProvider(resource, None if explicit else ExportAwareSampler())
    processors: list[SpanProcessor] = []
    if _enabled(
        "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        _check_protocol()
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    processors.extend(SimpleSpanProcessor(exporter) for exporter in span_exporters or [])
    for processor in processors:
        tracer_provider.add_span_processor(processor)

    readers: list[MetricReader] = list(metric_readers or [])
    endpoint: MetricsEndpoint | None = None
    if metrics_addr:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        # A registry per service: the default one is process-global.
        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
        endpoint = _start_metrics_endpoint(metrics_addr, registry, service_name)
    if _enabled(
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    # The SDK's default buckets (0..10000) are for milliseconds; every imagegate duration is in
    # seconds, so without this view all of them would land in the first bucket.
    seconds = View(
        instrument_type=Histogram,
        instrument_unit="s",
        aggregation=ExplicitBucketHistogramAggregation(list(DURATION_BUCKETS)),
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=[seconds])
    return Telemetry(
        service_name,
        tracer_provider,
        meter_provider,
        processors,
        settings=settings or TelemetrySettings(),
        metrics_endpoint=endpoint,
        metric_readers=readers,
    )
