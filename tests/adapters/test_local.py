"""The local adapter over real gRPC: deterministic, honest about sizes and formats, bounded."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from PIL import Image

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.local.adapter import MODEL_ID, LocalAdapter
from services.local.config import LocalSettings


async def _start(**settings):
    running, _ = await start_adapter_server(
        LocalAdapter(LocalSettings(**settings)),
        address="127.0.0.1:0",
        telemetry=setup_telemetry("test-local"),
    )
    channel = create_channel(running.address)
    return running, channel, provider_pb2_grpc.ProviderServiceStub(channel)


@pytest.fixture
async def stub():
    running, channel, stub = await _start()
    yield stub
    await channel.close()
    await running.stop(0)


def _req(**kw) -> provider_pb2.GenerateImageRequest:
    base = dict(
        request_id="r", model=MODEL_ID, prompt="treasure chest", width=96, height=64, num_images=1
    )
    base.update(kw)
    return provider_pb2.GenerateImageRequest(**base)


async def test_same_prompt_and_seed_give_identical_bytes(stub):
    a = await stub.GenerateImage(_req(seed=7), timeout=10)
    b = await stub.GenerateImage(_req(seed=7), timeout=10)
    c = await stub.GenerateImage(_req(seed=8), timeout=10)
    assert a.images[0].data == b.images[0].data
    assert a.images[0].data != c.images[0].data
    assert a.images[0].seed == 7


@pytest.mark.parametrize(
    ("fmt", "pil_format", "mime"),
    [
        (image_pb2.IMAGE_FORMAT_PNG, "PNG", "image/png"),
        (image_pb2.IMAGE_FORMAT_JPEG, "JPEG", "image/jpeg"),
        (image_pb2.IMAGE_FORMAT_WEBP, "WEBP", "image/webp"),
    ],
)
async def test_requested_size_and_format_are_real(stub, fmt, pil_format, mime):
    resp = await stub.GenerateImage(
        _req(width=512, height=384, output_format=fmt, num_images=2), timeout=10
    )
    assert len(resp.images) == 2
    for image in resp.images:
        decoded = Image.open(io.BytesIO(image.data))
        assert decoded.format == pil_format
        assert decoded.size == (512, 384)
        assert (image.width, image.height, image.mime_type) == (512, 384, mime)
    assert resp.usage.images == 2
    assert resp.usage.megapixels == pytest.approx(2 * 512 * 384 / 1e6)
    assert resp.images[0].data != resp.images[1].data


async def test_invalid_request_lists_field_violations(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateImage(_req(prompt=" ", num_images=5), timeout=5)
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in parsed.field_violations} == {"prompt", "num_images"}


async def test_unknown_model_is_rejected_with_reason(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateImage(_req(model="flux-pro"), timeout=5)
    parsed = parse_rpc_error(info.value)
    assert (parsed.code, parsed.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reasons.UNKNOWN_MODEL)


async def test_concurrency_limit_answers_resource_exhausted():
    running, channel, stub = await _start(latency_ms=300, max_concurrency=1)
    try:
        first = asyncio.ensure_future(stub.GenerateImage(_req(), timeout=5))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(_req(), timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert parsed.reason == reasons.PROVIDER_CONCURRENCY_LIMITED
        assert parsed.retry_after_seconds is not None
        assert len((await first).images) == 1
    finally:
        await channel.close()
        await running.stop(0)


async def test_deadline_is_honoured_with_a_provider_timeout():
    running, channel, stub = await _start(latency_ms=2000)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(_req(), timeout=0.5)
        assert loop.time() - started < 1.0
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await channel.close()
        await running.stop(0)


async def test_stream_reports_progress_then_result(stub):
    events = [
        e.WhichOneof("event")
        async for e in stub.StreamGenerateImage(
            provider_pb2.StreamGenerateImageRequest(request=_req(num_images=2)), timeout=10
        )
    ]
    assert events[-1] == "result"
    assert events.count("progress") >= 2


async def test_describe_reports_free_enabled_model(stub):
    d = await stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    assert d.provider == "local" and d.enabled
    assert [m.id for m in d.models] == [MODEL_ID]
    assert d.models[0].capabilities.max_images == 4
