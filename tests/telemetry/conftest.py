"""Fixtures for telemetry tests: real grpc.aio servers on loopback with in-memory exporters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.telemetry import Telemetry, setup_telemetry

SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_ENV:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Node:
    """One traced service on loopback."""

    name: str
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    running: RunningServer
    servicer: Echo


class Echo(provider_pb2_grpc.ProviderServiceServicer):
    """DescribeProvider answers its own name, or forwards to `downstream` first (a middle hop)."""

    def __init__(self, name: str, downstream: provider_pb2_grpc.ProviderServiceStub | None) -> None:
        self.name = name
        self.downstream = downstream
        self.error: ImagegateError | None = None

    async def DescribeProvider(
        self, request: provider_pb2.DescribeProviderRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.DescribeProviderResponse:
        if self.error is not None:
            raise self.error
        if self.downstream is not None:
            inner = await self.downstream.DescribeProvider(request, timeout=5)
            return provider_pb2.DescribeProviderResponse(provider=f"{self.name}>{inner.provider}")
        return provider_pb2.DescribeProviderResponse(provider=self.name)


@pytest.fixture
async def start_node() -> AsyncIterator[Callable[..., object]]:
    """Starts Echo services; `downstream` is a Node whose address the new one dials."""
    started: list[tuple[Node, grpc.aio.Channel | None]] = []

    async def start(name: str, downstream: Node | None = None, **setup: object) -> Node:
        spans = InMemorySpanExporter()
        reader = InMemoryMetricReader()
        telemetry = setup_telemetry(
            name,
            span_exporters=[spans],
            metric_readers=[reader],
            **setup,  # type: ignore[arg-type]
        )
        channel = None
        stub = None
        if downstream is not None:
            channel = create_channel(downstream.running.address, telemetry.client_interceptors())
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
        servicer = Echo(name, stub)
        running = await start_server(
            address="127.0.0.1:0",
            registrars=[
                lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, s)
            ],
            service_names=[SERVICE],
            domain=f"test.{name}",
            interceptors=telemetry.server_interceptors(),
        )
        node = Node(name, telemetry, spans, reader, running, servicer)
        started.append((node, channel))
        return node

    yield start
    for node, channel in started:
        if channel is not None:
            await channel.close()
        await node.running.stop(0)
        node.telemetry.shutdown()
