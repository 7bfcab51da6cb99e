"""One contract suite over every adapter: real gRPC, ProviderServicer, the provider's emulator."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import FAULT_KINDS, Fault
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.grpckit.server import RunningServer
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry

from .harness import Harness, harness_names, load_factory

PROVIDERS = harness_names()
# Deadline for calls whose fault makes the provider slow, and for everything else.
SHORT_DEADLINE = 1.5
DEADLINE = 15.0
# Time a timed-out call may take beyond its deadline before we call it "not honoured".
SLACK = 0.75
RETRY_AFTER = 7.0


@dataclass
class Stack:
    """A harness served over real gRPC, with the spans it produced."""

    harness: Harness
    server: RunningServer
    channel: grpc.aio.Channel
    stub: provider_pb2_grpc.ProviderServiceStub
    spans: InMemorySpanExporter

    def request(self, **overrides: object) -> provider_pb2.GenerateImageRequest:
        fields: dict[str, object] = {
            "request_id": "req-contract",
            "model": self.harness.model,
            "prompt": "a red fox in snow",
            "width": self.harness.width,
            "height": self.harness.height,
            "num_images": 1,
            "output_format": image_pb2.IMAGE_FORMAT_PNG,
        }
        fields.update(overrides)
        return provider_pb2.GenerateImageRequest(**fields)  # type: ignore[arg-type]

    async def fail(
        self, request: provider_pb2.GenerateImageRequest, timeout: float = DEADLINE
    ) -> ParsedStatus:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.stub.GenerateImage(request, timeout=timeout)
        return parse_rpc_error(info.value)


async def _stack(provider: str, *, enabled: bool = True) -> Stack:
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry(f"adapter-{provider}", span_exporters=[spans])
    harness = await load_factory(provider)(telemetry, enabled=enabled)
    server, _ = await start_adapter_server(
        harness.adapter, address="127.0.0.1:0", telemetry=telemetry
    )
    channel = create_channel(server.address)
    return Stack(harness, server, channel, provider_pb2_grpc.ProviderServiceStub(channel), spans)


async def _close(stack: Stack) -> None:
    await stack.channel.close()
    await stack.server.stop(0)
    await stack.harness.aclose()


@pytest.fixture(params=PROVIDERS)
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    s = await _stack(request.param)
    try:
        yield s
    finally:
        await _close(s)


def _decode(image: image_pb2.Image) -> Image.Image:
    img = Image.open(io.BytesIO(image.data))
    img.load()
    return img


def test_every_fault_has_a_harness_and_expectation() -> None:
    assert PROVIDERS, "no harness_<provider>.py registered"


async def test_generates_image_of_requested_size(stack: Stack) -> None:
    h = stack.harness
    resp = await stack.stub.GenerateImage(stack.request(), timeout=DEADLINE)
    assert len(resp.images) == 1
    img = _decode(resp.images[0])
    assert img.size == (h.width, h.height)
    assert img.format == "PNG"
    assert resp.images[0].mime_type == "image/png"
    assert (resp.images[0].width, resp.images[0].height) == (h.width, h.height)
    assert resp.model == h.model
    assert resp.usage.images == 1
    assert resp.usage.megapixels == pytest.approx(h.width * h.height / 1e6)
    assert resp.usage.provider_job_id
    if h.reports_provider_seconds:
        assert resp.usage.provider_seconds > 0
    assert list(resp.deviations) == []


async def test_several_images_converted_to_requested_format(stack: Stack) -> None:
    h = stack.harness
    described = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    model = next(m for m in described.models if m.id == h.model)
    # Only models that declare seed support get one: the servicer refuses undeclared parameters.
    seed = {"seed": 42} if model.capabilities.seed else {}
    resp = await stack.stub.GenerateImage(
        stack.request(num_images=2, output_format=image_pb2.IMAGE_FORMAT_JPEG, **seed),
        timeout=DEADLINE,
    )
    assert len(resp.images) == 2
    for image in resp.images:
        assert _decode(image).format == "JPEG"
        assert image.mime_type == "image/jpeg"
        assert (image.width, image.height) == (h.width, h.height)
    assert resp.usage.images == 2
    assert resp.usage.megapixels == pytest.approx(2 * h.width * h.height / 1e6)


async def test_describe_provider_is_truthful(stack: Stack) -> None:
    h = stack.harness
    resp = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    assert resp.provider == h.provider
    assert resp.enabled
    assert h.model in [m.id for m in resp.models]
    assert resp.max_concurrency >= 1
    assert h.key not in resp.base_url
    for m in resp.models:
        assert m.capabilities.max_side >= m.capabilities.min_side > 0
        assert m.capabilities.formats


async def test_stream_ends_with_one_result(stack: Stack) -> None:
    events = [
        e
        async for e in stack.stub.StreamGenerateImage(
            provider_pb2.StreamGenerateImageRequest(request=stack.request()), timeout=DEADLINE
        )
    ]
    assert events[-1].WhichOneof("event") == "result"
    assert len(events[-1].result.images) == 1
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    if stack.harness.reports_progress:
        assert progress, "a polling provider reports progress before the result"
        assert all(p.provider_job_id for p in progress)


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_fault_maps_to_code_and_reason(stack: Stack, kind: str) -> None:
    expect = stack.harness.expect(kind)
    stack.harness.emulator.faults.set(Fault(kind, retry_after=RETRY_AFTER))
    timeout = SHORT_DEADLINE if expect.timeout_fault else DEADLINE
    if expect.code is None:
        resp = await stack.stub.GenerateImage(stack.request(), timeout=timeout)
        img = _decode(resp.images[0])
        assert img.format == "PNG", "format must come from the bytes, not the label"
        assert img.size == (stack.harness.width, stack.harness.height)
        return
    started = time.monotonic()
    err = await stack.fail(stack.request(), timeout=timeout)
    elapsed = time.monotonic() - started
    assert (err.code, err.reason) == (expect.code, expect.reason), err.message
    assert err.domain == f"imagegate.provider.{stack.harness.provider}"
    assert err.metadata[reasons.META_PROVIDER] == stack.harness.provider
    assert err.metadata[reasons.META_PROVIDER_MODEL] == stack.harness.model
    if expect.retry_info:
        assert err.retry_after_seconds == pytest.approx(RETRY_AFTER)
    if expect.timeout_fault:
        assert elapsed < SHORT_DEADLINE + SLACK, "deadline not honoured"
    assert stack.harness.key not in err.message
    assert stack.harness.key not in str(err.metadata)


async def test_fault_clears_and_next_call_succeeds(stack: Stack) -> None:
    stack.harness.emulator.faults.set(Fault("error_503", count=1))
    err = await stack.fail(stack.request())
    assert err.reason == reasons.PROVIDER_UNAVAILABLE
    resp = await stack.stub.GenerateImage(stack.request(), timeout=DEADLINE)
    assert len(resp.images) == 1


async def test_disabled_without_key() -> None:
    for provider in PROVIDERS:
        s = await _stack(provider, enabled=False)
        try:
            describe = await s.stub.DescribeProvider(provider_pb2.DescribeProviderRequest())
            assert not describe.enabled
            err = await s.fail(s.request())
            assert (err.code, err.reason) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.PROVIDER_DISABLED,
            )
            assert s.harness.emulator.calls == []
        finally:
            await _close(s)


async def test_key_never_in_logs_spans_or_errors(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    key = stack.harness.key
    caplog.set_level(logging.DEBUG)
    await stack.stub.GenerateImage(stack.request(), timeout=DEADLINE)
    messages: list[str] = []
    for kind in ("auth_failed", "rate_limit", "malformed_json", "moderation", "expired_url"):
        stack.harness.emulator.faults.set(Fault(kind, count=None))
        err = await stack.fail(stack.request())
        messages.append(err.message + repr(err.metadata))
        stack.harness.emulator.faults.clear()
    assert all(
        any(v.endswith(key) for v in c.headers.values()) for c in stack.harness.emulator.calls
    ), "the key is sent in a header on every provider call"
    for call in stack.harness.emulator.cdn_calls:
        assert not any(key in v for v in call.headers.values()), "key sent to a result host"
    for text in messages:
        assert key not in text
    for record in caplog.records:
        assert key not in record.getMessage()
        assert key not in repr(vars(record))
    spans = stack.spans.get_finished_spans()
    assert spans, "provider calls are traced"
    for span in spans:
        assert key not in span.name
        assert key not in repr(dict(span.attributes or {}))
        for event in span.events:
            assert key not in repr(dict(event.attributes or {}))
    assert key not in repr(stack.harness.adapter.__dict__)


async def test_provider_calls_are_child_spans_of_the_rpc(stack: Stack) -> None:
    await stack.stub.GenerateImage(stack.request(), timeout=DEADLINE)
    spans = stack.spans.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER and "GenerateImage" in s.name]
    assert len(servers) == 1
    server = servers[0].context
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert clients, "provider HTTP calls are traced"
    for span in clients:
        assert span.context.trace_id == server.trace_id
        assert span.parent is not None and span.parent.span_id == server.span_id
