"""Together adapter over real gRPC against its emulator: base64, timings, parameters, errors."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault, render_image
from imagegate.emulators.together import SDXL, TogetherEmulator, inference_ms
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.grpckit.server import RunningServer
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import error_from_status
from imagegate.providerkit.main import start_adapter_server
from imagegate.providerkit.types import GenerationRequest, OutputFormat
from imagegate.telemetry import setup_telemetry
from services.together import client as together_client
from services.together import wire
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings

KEY = "tgp_v1_unit-secret-0f9e8d"
FLUX = wire.FLUX_SCHNELL


@dataclass
class Stack:
    emulator: TogetherEmulator
    server: RunningServer
    channel: grpc.aio.Channel
    stub: provider_pb2_grpc.ProviderServiceStub

    async def fail(
        self, request: provider_pb2.GenerateImageRequest, timeout: float = 10
    ) -> ParsedStatus:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.stub.GenerateImage(request, timeout=timeout)
        return parse_rpc_error(info.value)

    def body(self) -> dict:
        return self.emulator.calls_to("/v1/images/generations")[-1].body


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    emulator = TogetherEmulator(key=KEY)
    base_url = await emulator.start()
    adapter = TogetherAdapter(
        TogetherSettings(key=SecretStr(KEY), base_url=base_url + "/v1"),
        telemetry=setup_telemetry("test-together"),
    )
    server, _ = await start_adapter_server(
        adapter, address="127.0.0.1:0", telemetry=setup_telemetry("test-together")
    )
    channel = create_channel(server.address)
    yield Stack(emulator, server, channel, provider_pb2_grpc.ProviderServiceStub(channel))
    await channel.close()
    await server.stop(0)
    await adapter.aclose()
    await emulator.stop()


def _req(**kw: object) -> provider_pb2.GenerateImageRequest:
    fields: dict[str, object] = dict(
        request_id="r-tg",
        model=FLUX,
        prompt="a lighthouse at dusk",
        width=512,
        height=384,
        num_images=1,
    )
    fields.update(kw)
    return provider_pb2.GenerateImageRequest(**fields)  # type: ignore[arg-type]


async def test_base64_images_and_timings_in_milliseconds(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        _req(num_images=2, seed=5, output_format=image_pb2.IMAGE_FORMAT_WEBP), timeout=10
    )
    body = stack.body()
    assert body["response_format"] == "base64"
    assert body["output_format"] == "png", "WebP is converted from a lossless PNG"
    assert (body["n"], body["seed"], body["width"], body["height"]) == (2, 5, 512, 384)
    assert body["steps"] == 4, "schnell gets its own default, the API default is above its range"
    assert "guidance_scale" not in body and "negative_prompt" not in body
    assert len(resp.images) == 2
    for image in resp.images:
        assert Image.open(io.BytesIO(image.data)).format == "WEBP"
        assert (image.width, image.height) == (512, 384)
    assert resp.usage.provider_seconds == pytest.approx(inference_ms(512, 384, 4, 0.0) / 1000)
    assert resp.usage.provider_job_id.startswith("tg-") and resp.usage.provider_job_id.endswith(
        "-IAD"
    )
    assert resp.usage.megapixels == pytest.approx(2 * 512 * 384 / 1e6)


async def test_sdxl_passes_negative_prompt_guidance_and_steps(stack: Stack) -> None:
    await stack.stub.GenerateImage(
        _req(
            model=SDXL,
            width=1024,
            height=1024,
            negative_prompt="blurry",
            steps=30,
            guidance_scale=6.5,
            output_format=image_pb2.IMAGE_FORMAT_JPEG,
        ),
        timeout=10,
    )
    body = stack.body()
    assert (body["negative_prompt"], body["steps"], body["guidance_scale"]) == ("blurry", 30, 6.5)
    assert body["output_format"] == "jpeg"


async def test_flux_declares_what_it_cannot_honour(stack: Stack) -> None:
    describe = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest())
    caps = {m.id: m.capabilities for m in describe.models}
    assert set(caps) == {wire.FLUX_SCHNELL, wire.FLUX_DEV, SDXL, *wire.KONTEXT_MODELS}
    assert not caps[FLUX].negative_prompt and not caps[FLUX].guidance
    assert caps[wire.FLUX_DEV].guidance and caps[SDXL].negative_prompt
    text_models = [caps[m] for m in (wire.FLUX_SCHNELL, wire.FLUX_DEV, SDXL)]
    assert all(c.side_multiple == 8 and c.max_images == 4 for c in text_models)
    assert all(caps[m].max_reference_images == 1 for m in wire.KONTEXT_MODELS)
    assert describe.base_url == stack.emulator.base_url, "the /v1 suffix of an override is dropped"
    err = await stack.fail(_req(negative_prompt="people"))
    assert (err.code, err.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.PROVIDER_UNSUPPORTED_PARAMETER,
    )
    err = await stack.fail(_req(width=500))
    assert err.reason == reasons.PROVIDER_UNSUPPORTED_PARAMETER
    assert stack.emulator.calls == []


async def test_steps_outside_the_model_range_fail_or_clamp_with_a_deviation(stack: Stack) -> None:
    err = await stack.fail(_req(steps=20))
    assert (err.code, err.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.PROVIDER_UNSUPPORTED_PARAMETER,
    )
    assert "1..12" in err.message
    assert stack.emulator.calls == []
    resp = await stack.stub.GenerateImage(_req(steps=20, allow_degradation=True), timeout=10)
    assert stack.body()["steps"] == 12
    assert [(d.field, d.requested, d.delivered) for d in resp.deviations] == [("steps", "20", "12")]


async def test_rate_limit_carries_retry_info(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("rate_limit", count=1, retry_after=3))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.PROVIDER_RATE_LIMITED,
    )
    assert err.retry_after_seconds == pytest.approx(3)
    assert err.metadata[reasons.META_HTTP_STATUS] == "429"


async def test_payment_required_is_out_of_credits(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("out_of_credits", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_OUT_OF_CREDITS,
    )
    assert "Credit limit" in err.message


async def test_url_results_are_downloaded_without_the_key(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("expired_url", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_BAD_RESPONSE)
    assert "expired" in err.message
    assert err.metadata[reasons.META_BILLABLE] == "true"
    assert stack.emulator.cdn_calls
    assert all("authorization" not in c.headers for c in stack.emulator.cdn_calls)


async def test_timeout_after_sending_is_billable(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("hang"))
    err = await stack.fail(_req(), timeout=0.8)
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT)
    assert err.metadata[reasons.META_BILLABLE] == "true"


def _response(
    status: int, payload: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        json=payload,
        headers=headers,
        request=httpx.Request(
            "POST",
            "https://api.together.xyz/v1/images/generations",
            headers={"authorization": f"Bearer {KEY}"},
        ),
    )


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (
            400,
            {"message": "prompt flagged", "code": "content_policy_violation"},
            reasons.PROVIDER_CONTENT_MODERATED,
        ),
        (
            422,
            {"message": "NSFW content detected", "type": "invalid_request_error"},
            reasons.PROVIDER_CONTENT_MODERATED,
        ),
        (
            400,
            {"message": "Too many requests", "code": "rate_limit"},
            reasons.PROVIDER_RATE_LIMITED,
        ),
        (400, {"message": "width must be a multiple of 8"}, reasons.PROVIDER_INVALID_REQUEST),
        (402, {"message": "Credit limit exceeded"}, reasons.PROVIDER_OUT_OF_CREDITS),
        (401, {"message": f"Invalid API key {KEY}"}, reasons.PROVIDER_AUTH_FAILED),
        (503, {"message": "Engine overloaded"}, reasons.PROVIDER_UNAVAILABLE),
    ],
)
def test_error_bodies_map_to_reasons(status: int, error: dict, reason: str) -> None:
    resp = _response(status, {"error": error}, {"retry-after": "2"})
    found = together_client.together_special(resp, "job-1")
    if found is None:
        found = error_from_status(resp, message="Together")
    assert found.reason == reason
    assert KEY not in found.message
    if reason == reasons.PROVIDER_RATE_LIMITED:
        assert found.retry_after_seconds == 2


async def test_bad_base64_and_missing_data_are_billable_bad_responses() -> None:
    with pytest.raises(ProviderError) as info:
        await wire.parse_images(
            {"id": "x", "data": [{"index": 0, "b64_json": "***not base64***"}]},
            wanted=OutputFormat.PNG,
            seed=None,
        )
    assert (info.value.reason, info.value.billable, info.value.provider_job_id) == (
        reasons.PROVIDER_BAD_RESPONSE,
        True,
        "x",
    )
    with pytest.raises(ProviderError) as info:
        await wire.parse_images({"id": "y"}, wanted=OutputFormat.PNG, seed=None)
    assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE


async def test_items_are_ordered_by_index_and_timings_not_summed() -> None:
    small = base64.b64encode(render_image(16, 8, OutputFormat.JPEG, 1)).decode()
    large = base64.b64encode(render_image(32, 8, OutputFormat.JPEG, 2)).decode()
    parsed = await wire.parse_images(
        {
            "id": "z",
            "data": [
                {"index": 1, "b64_json": large, "timings": {"inference": 900}},
                {"index": 0, "b64_json": small, "timings": {"inference": 900}},
            ],
        },
        wanted=OutputFormat.JPEG,
        seed=3,
    )
    assert [i.width for i in parsed.images] == [16, 32]
    assert parsed.provider_seconds == pytest.approx(0.9)
    assert all(i.seed is None for i in parsed.images), "per-image seeds of a batch are unknown"


def test_settings_read_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)
    monkeypatch.setenv("IMAGEGATE_TOGETHER_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("IMAGEGATE_TOGETHER_ADDR", "127.0.0.1:1234")
    settings = TogetherSettings()
    assert settings.enabled and settings.addr == "127.0.0.1:1234"
    assert settings.is_loopback_override
    assert KEY not in repr(settings)
    monkeypatch.setenv("IMAGEGATE_TOGETHER_BASE_URL", "http://api.together.xyz")
    with pytest.raises(ValueError, match="https"):
        TogetherSettings()
    monkeypatch.delenv("TOGETHER_API_KEY")
    monkeypatch.delenv("IMAGEGATE_TOGETHER_BASE_URL")
    assert not TogetherSettings().enabled
    assert TogetherSettings().addr == "127.0.0.1:1234"


async def test_refused_connection_is_unavailable_and_not_billable() -> None:
    adapter = TogetherAdapter(TogetherSettings(key=SecretStr(KEY), base_url="http://127.0.0.1:1"))
    try:
        with pytest.raises(ProviderError) as info:
            await adapter.generate(
                GenerationRequest(request_id="r", model=FLUX, prompt="p", width=64, height=64),
                Deadline.after(5),
                None,
            )
    finally:
        await adapter.aclose()
    assert info.value.reason == reasons.PROVIDER_UNAVAILABLE
    assert not info.value.billable, "the request never left"


async def test_emulator_with_few_pictures_still_answers_distinct_valid_images(
    stack: Stack,
) -> None:
    # The bench's emulator mode: seeds 3 and 7 share one render (7 % 4 == 3), yet every answer
    # differs byte for byte and decodes to the requested size through the adapter.
    stack.emulator.pictures = 4
    png = image_pb2.IMAGE_FORMAT_PNG
    jpeg = image_pb2.IMAGE_FORMAT_JPEG
    answers = [
        (await stack.stub.GenerateImage(_req(seed=seed, output_format=fmt), timeout=10)).images[0]
        for seed, fmt in ((3, png), (7, png), (3, jpeg), (7, jpeg))
    ]
    assert len({a.data for a in answers}) == 4
    pixels = set()
    for answer in answers:
        with Image.open(io.BytesIO(answer.data)) as img:
            img.load()
            assert img.size == (512, 384)
            pixels.add((img.format, img.tobytes()))
    assert len(pixels) == 2, "seeds 3 and 7 share one picture in each format"
