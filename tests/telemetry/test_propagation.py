"""W3C trace context across real grpc.aio hops, sampling, statuses, and untraced health checks."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ImagegateError
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _stub(
    address: str, interceptors=()
) -> tuple[grpc.aio.Channel, provider_pb2_grpc.ProviderServiceStub]:
    channel = create_channel(address, interceptors)
    return channel, provider_pb2_grpc.ProviderServiceStub(channel)


async def test_callers_traceparent_is_continued_and_each_hop_is_a_child(start_node):
    leaf = await start_node("leaf")
    middle = await start_node("middle", downstream=leaf)
    channel, stub = _stub(middle.running.address)
    reply = await stub.DescribeProvider(
        provider_pb2.DescribeProviderRequest(),
        metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")],
        timeout=5,
    )
    await channel.close()
    assert reply.provider == "middle>leaf"

    (m_server,) = [s for s in middle.spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    (m_client,) = [s for s in middle.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    (l_server,) = leaf.spans.get_finished_spans()
    # The caller's trace is continued: same trace id, parent = the caller's span id.
    for span in (m_server, m_client, l_server):
        assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert m_server.parent is not None and m_server.parent.is_remote
    assert f"{m_server.parent.span_id:016x}" == PARENT_ID
    # Outbound calls carry the *current* span, not the incoming header (LiteLLM#39067).
    assert m_client.parent is not None and m_client.parent.span_id == m_server.context.span_id
    assert l_server.parent is not None and l_server.parent.span_id == m_client.context.span_id
    assert l_server.parent.span_id != int(PARENT_ID, 16)
    assert m_server.name == "imagegate.provider.v1.ProviderService/DescribeProvider"
    assert m_server.attributes["rpc.system"] == "grpc"
    assert m_server.attributes["rpc.service"] == "imagegate.provider.v1.ProviderService"
    assert m_server.attributes["rpc.method"] == "DescribeProvider"
    assert m_server.attributes["rpc.grpc.status_code"] == 0
    assert m_server.attributes["network.peer.address"] == "127.0.0.1"
    assert m_server.resource.attributes["service.name"] == "imagegate-middle"
    assert l_server.resource.attributes["service.name"] == "imagegate-leaf"


async def test_without_traceparent_a_new_trace_starts(start_node):
    node = await start_node("solo")
    channel, stub = _stub(node.running.address)
    await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    await channel.close()
    first, second = node.spans.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


async def test_unsampled_caller_yields_no_spans_anywhere(start_node):
    leaf = await start_node("leaf")
    middle = await start_node("middle", downstream=leaf)
    channel, stub = _stub(middle.running.address)
    await stub.DescribeProvider(
        provider_pb2.DescribeProviderRequest(),
        metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")],
        timeout=5,
    )
    await channel.close()
    assert middle.spans.get_finished_spans() == ()
    assert leaf.spans.get_finished_spans() == ()


async def test_sampler_env_is_read_and_parent_based(start_node, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    node = await start_node("ratio0")
    channel, stub = _stub(node.running.address)
    await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    assert node.spans.get_finished_spans() == ()  # a new root at ratio 0 is dropped
    await stub.DescribeProvider(
        provider_pb2.DescribeProviderRequest(),
        metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")],
        timeout=5,
    )
    await channel.close()
    (span,) = node.spans.get_finished_spans()  # a sampled caller is honoured
    assert f"{span.context.trace_id:032x}" == TRACE_ID


async def test_health_and_reflection_produce_no_spans_on_either_side(start_node):
    leaf = await start_node("leaf")
    client = await start_node("client")
    channel = create_channel(leaf.running.address, client.telemetry.client_interceptors())
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "imagegate.provider.v1.ProviderService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert leaf.spans.get_finished_spans() == ()
    assert client.spans.get_finished_spans() == ()
    # A real RPC on the same channel is traced on both sides.
    await provider_pb2_grpc.ProviderServiceStub(channel).DescribeProvider(
        provider_pb2.DescribeProviderRequest(), timeout=5
    )
    await channel.close()
    assert len(leaf.spans.get_finished_spans()) == 1
    assert len(client.spans.get_finished_spans()) == 1


async def test_error_status_from_abort_with_status_is_on_the_span(start_node):
    node = await start_node("failing")
    node.servicer.error = ImagegateError(
        grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", "upstream 503", domain="test"
    )
    channel, stub = _stub(node.running.address)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    await channel.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    (span,) = node.spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert span.attributes["imagegate.error.reason"] == "PROVIDER_UNAVAILABLE"
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "upstream 503"


async def test_client_errors_are_not_server_errors(start_node):
    node = await start_node("strict")
    node.servicer.error = ImagegateError(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "bad width", domain="test"
    )
    channel, stub = _stub(node.running.address)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    await channel.close()
    (span,) = node.spans.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code.name == "UNSET"  # semconv: caller errors are not span errors


async def test_without_an_exporter_the_callers_trace_id_still_reaches_the_handler() -> None:
    from opentelemetry import trace

    from imagegate.grpckit.server import start_server
    from imagegate.telemetry import setup_telemetry

    seen: list[trace.SpanContext] = []

    class Probe(provider_pb2_grpc.ProviderServiceServicer):
        async def DescribeProvider(self, request, context):
            span = trace.get_current_span()
            assert not span.is_recording()
            seen.append(span.get_span_context())
            return provider_pb2.DescribeProviderResponse(provider="probe")

    telemetry = setup_telemetry("no-exporter")
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(Probe(), s)],
        service_names=["imagegate.provider.v1.ProviderService"],
        domain="test.no-exporter",
        interceptors=telemetry.server_interceptors(),
    )
    try:
        channel, stub = _stub(running.address)
        request = provider_pb2.DescribeProviderRequest()
        await stub.DescribeProvider(
            request, metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")], timeout=5
        )
        await stub.DescribeProvider(request, timeout=5)
        await channel.close()
    finally:
        await running.stop(0)
        telemetry.shutdown()
    continued, fresh = seen
    assert f"{continued.trace_id:032x}" == TRACE_ID
    assert continued.span_id != int(PARENT_ID, 16) and continued.is_valid
    assert fresh.is_valid and f"{fresh.trace_id:032x}" != TRACE_ID
