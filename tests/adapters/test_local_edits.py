"""The local backend's image-to-image and inpainting: real Pillow blends, over real gRPC."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image, ImageDraw

from imagegate.common.v1 import image_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.inputs.checks import InputLimits
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.local.adapter import MODEL_ID, LocalAdapter
from services.local.config import LocalSettings

SIZE = (96, 64)


@pytest.fixture
async def stub():
    running, _ = await start_adapter_server(
        LocalAdapter(LocalSettings()), address="127.0.0.1:0", telemetry=setup_telemetry("t")
    )
    channel = create_channel(running.address)
    yield provider_pb2_grpc.ProviderServiceStub(channel)
    await channel.close()
    await running.stop(0)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def source() -> bytes:
    img = Image.new("RGB", SIZE, (20, 200, 60))
    ImageDraw.Draw(img).rectangle([5, 5, 40, 30], fill=(200, 20, 20))
    return _png(img)


def request(**kw: object) -> provider_pb2.GenerateImageRequest:
    base: dict[str, object] = {
        "model": MODEL_ID,
        "prompt": "a meadow",
        "width": SIZE[0],
        "height": SIZE[1],
        "num_images": 1,
        "output_format": image_pb2.IMAGE_FORMAT_PNG,
        "image": source(),
    }
    base.update(kw)
    return provider_pb2.GenerateImageRequest(**base)  # type: ignore[arg-type]


def pixels(data: bytes) -> list[tuple[int, int, int]]:
    with Image.open(io.BytesIO(data)) as img:
        return list(img.convert("RGB").get_flattened_data())  # type: ignore[arg-type]


async def test_describe_declares_image_to_image_and_inpainting(stub) -> None:
    caps = (await stub.DescribeProvider(provider_pb2.DescribeProviderRequest())).models[0]
    assert caps.capabilities.image_to_image and caps.capabilities.inpainting
    assert caps.capabilities.strength and not caps.capabilities.max_reference_images


async def test_strength_zero_keeps_the_input_and_one_replaces_it(stub) -> None:
    keep = await stub.GenerateImage(request(strength=0.0), timeout=10)
    assert pixels(keep.images[0].data) == pixels(source())
    moved = await stub.GenerateImage(request(strength=1.0), timeout=10)
    assert pixels(moved.images[0].data) != pixels(source())
    assert (moved.images[0].width, moved.images[0].height) == SIZE


async def test_inpainting_changes_only_the_masked_area(stub) -> None:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 47, 63], fill=255)
    resp = await stub.GenerateImage(request(strength=1.0, mask=_png(mask)), timeout=10)
    out, src = pixels(resp.images[0].data), pixels(source())
    width = SIZE[0]
    right = [i for i in range(len(src)) if i % width >= 48]
    left = [i for i in range(len(src)) if i % width < 48]
    assert all(out[i] == src[i] for i in right), "unmasked pixels must be kept exactly"
    assert any(out[i] != src[i] for i in left), "masked pixels are repainted"


async def test_the_adapter_enforces_its_configured_input_limit() -> None:
    running, _ = await start_adapter_server(
        LocalAdapter(LocalSettings()),
        address="127.0.0.1:0",
        telemetry=setup_telemetry("t"),
        input_limits=InputLimits(max_bytes=1024),
    )
    channel = create_channel(running.address)
    try:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(request(image=source() + b"\0" * 2048), timeout=10)
        err = parse_rpc_error(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.field_violations] == ["image"]
    finally:
        await channel.close()
        await running.stop(0)
