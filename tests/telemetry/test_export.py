"""Exporters: nothing leaves the process without an endpoint; OTLP and Prometheus when asked."""

from __future__ import annotations

import asyncio

import grpc
import httpx
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from imagegate.grpckit.channel import create_channel
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.telemetry import metrics_address, setup_telemetry


class FakeCollector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """An OTLP/gRPC receiver on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []
        self.metric_names: set[str] = set()

    async def Export(self, request, context):  # type: ignore[override]
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for rs in request.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                for ss in rs.scope_spans:
                    self.spans.extend((service, s.name) for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                self.metric_names.update(m.name for m in sm.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def _collector() -> tuple[grpc.aio.Server, FakeCollector, int]:
    collector = FakeCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, collector, port


def test_nothing_is_exported_without_an_endpoint():
    telemetry = setup_telemetry("router")
    with telemetry.tracer.start_as_current_span("imagegate.request") as span:
        assert span.is_recording()  # spans still exist for logs' trace ids
    assert telemetry.processors == []
    assert telemetry.tracer_provider._active_span_processor._span_processors == ()
    assert telemetry.metric_readers == []
    assert telemetry.metrics_endpoint is None
    telemetry.shutdown()


def test_exporter_none_and_sdk_disabled_win_over_an_endpoint(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    telemetry = setup_telemetry("router")
    assert telemetry.processors == [] and telemetry.metric_readers == []
    telemetry.shutdown()
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.delenv("OTEL_METRICS_EXPORTER")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry("router")
    assert telemetry.processors == [] and telemetry.metric_readers == []
    telemetry.shutdown()


async def test_otlp_endpoint_receives_spans_and_metrics_of_each_service(monkeypatch):
    server, collector, port = await _collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    router = setup_telemetry("router")
    quota = setup_telemetry("quota")
    assert isinstance(router.processors[0], BatchSpanProcessor)
    with (
        router.tracer.start_as_current_span("imagegate.request"),
        quota.tracer.start_as_current_span("quota.reserve"),
    ):
        pass
    router.meter.create_counter("imagegate.router.requests").add(1, {"imagegate.outcome": "ok"})
    # shutdown() flushes synchronously; run it off the loop that serves the collector.
    await asyncio.to_thread(router.shutdown)
    await asyncio.to_thread(quota.shutdown)
    await server.stop(0)
    assert ("imagegate-router", "imagegate.request") in collector.spans
    assert ("imagegate-quota", "quota.reserve") in collector.spans
    assert "imagegate.router.requests" in collector.metric_names


async def test_prometheus_endpoint_per_service_serves_rpc_metrics():
    node = setup_telemetry("metering", metrics_addr="127.0.0.1:0")
    other = setup_telemetry("quota", metrics_addr="127.0.0.1:0")
    from imagegate.grpckit.server import start_server

    class Echo(provider_pb2_grpc.ProviderServiceServicer):
        async def DescribeProvider(self, request, context):
            return provider_pb2.DescribeProviderResponse(provider="x")

    running = await start_server(
        address="127.0.0.1:0",
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(Echo(), s)],
        service_names=["imagegate.provider.v1.ProviderService"],
        domain="test",
        interceptors=node.server_interceptors(),
    )
    channel = create_channel(running.address)
    await provider_pb2_grpc.ProviderServiceStub(channel).DescribeProvider(
        provider_pb2.DescribeProviderRequest(), timeout=5
    )
    await channel.close()
    await running.stop(0)
    assert node.metrics_endpoint is not None and other.metrics_endpoint is not None
    assert node.metrics_endpoint.port != other.metrics_endpoint.port
    async with httpx.AsyncClient() as client:
        mine = (await client.get(f"http://127.0.0.1:{node.metrics_endpoint.port}/metrics")).text
        theirs = (await client.get(f"http://127.0.0.1:{other.metrics_endpoint.port}/metrics")).text
    assert "rpc_server_call_duration_seconds_bucket" in mine
    assert 'rpc_method="DescribeProvider"' in mine
    assert 'rpc_grpc_status_code="0"' in mine
    assert 'service_name="imagegate-metering"' in mine  # target_info
    assert "rpc_server_call_duration" not in theirs  # each service its own registry
    node.shutdown()
    other.shutdown()
    node.shutdown()  # idempotent


def test_metrics_address_defaults_and_overrides():
    assert metrics_address("router", {}) == "127.0.0.1:9464"
    assert metrics_address("quota", {}) == "127.0.0.1:9465"
    assert metrics_address("metering", {}) == "127.0.0.1:9466"
    assert metrics_address("adapter-local", {}) == "127.0.0.1:9470"
    assert metrics_address("adapter-huggingface", {}) == "127.0.0.1:9472"
    assert metrics_address("adapter-together", {}) == "127.0.0.1:9476"
    assert metrics_address("router", {"IMAGEGATE_ROUTER_METRICS_ADDR": ""}) == ""
    assert (
        metrics_address("adapter-fal", {"IMAGEGATE_FAL_METRICS_ADDR": "0.0.0.0:9999"})
        == "0.0.0.0:9999"
    )
