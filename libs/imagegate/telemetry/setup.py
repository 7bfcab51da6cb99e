"""Builds one service's tracer and meter providers from the standard OTEL_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import grpc
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc import filters as grpc_filters
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


@dataclass
class Telemetry:
    """A service's telemetry: providers owned by this process, never the global ones."""

    service_name: str
    """OTel `service.name`."""
    tracer_provider: TracerProvider
    """Where this service's spans go."""
    meter_provider: MeterProvider
    """Where this service's metrics go."""
    processors: list[SpanProcessor] = field(default_factory=list)
    """Span processors added at setup (exporters)."""

    @property
    def tracer(self) -> trace.Tracer:
        """Tracer for business spans."""
        return self.tracer_provider.get_tracer("imagegate." + self.service_name)

    @property
    def meter(self) -> metrics.Meter:
        """Meter for business metrics."""
        return self.meter_provider.get_meter("imagegate." + self.service_name)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Server span per RPC, continuing the caller's W3C trace; health checks untraced."""
        return [
            aio_server_interceptor(
                tracer_provider=self.tracer_provider,
                filter_=grpc_filters.negate(grpc_filters.health_check()),
            )
        ]

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Client span per outgoing RPC, injecting the current context (not the incoming one)."""
        return list(
            aio_client_interceptors(
                tracer_provider=self.tracer_provider,
                filter_=grpc_filters.negate(grpc_filters.health_check()),
            )
        )

    def shutdown(self) -> None:
        """Flushes and stops exporters."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    service_name: str, *, span_exporters: list[SpanExporter] | None = None
) -> Telemetry:
    """Telemetry for one service.

    Spans are exported over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-specific
    variable) is set; `span_exporters` adds more (tests pass an InMemorySpanExporter).
    Sampling follows OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK reads them).
    """
    resource = Resource.create({"service.name": f"imagegate-{service_name}"})
    tracer_provider = TracerProvider(resource=resource)
    processors: list[SpanProcessor] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    for exporter in span_exporters or []:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        processors.append(SimpleSpanProcessor(exporter))
    for processor in processors:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(resource=resource)
    return Telemetry(service_name, tracer_provider, meter_provider, processors)
