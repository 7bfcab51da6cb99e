"""HF adapter over real gRPC against the router emulator: raw bytes, loading, credits, partners."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.emulators.base import FAULT_KINDS, Fault
from imagegate.emulators.huggingface import SD21, SDXL, HuggingFaceEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.grpckit.server import RunningServer
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.huggingface import wire
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from tests.contract.harness import EXPECTED, Expect

KEY = "hf_unitSecretToken5a4b3c2d1e"


@dataclass
class Stack:
    emulator: HuggingFaceEmulator
    server: RunningServer
    channel: grpc.aio.Channel
    stub: provider_pb2_grpc.ProviderServiceStub
    adapter: Adapter

    async def fail(
        self, request: provider_pb2.GenerateImageRequest, timeout: float = 10
    ) -> ParsedStatus:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.stub.GenerateImage(request, timeout=timeout)
        return parse_rpc_error(info.value)


async def _stack(**settings: object) -> Stack:
    emulator = HuggingFaceEmulator(key=KEY)
    base_url = await emulator.start()
    telemetry = setup_telemetry("test-huggingface")
    adapter = HuggingFaceAdapter(
        HuggingFaceSettings(key=SecretStr(KEY), base_url=base_url, **settings),  # type: ignore[arg-type]
        telemetry=telemetry,
    )
    server, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    channel = create_channel(server.address)
    return Stack(emulator, server, channel, provider_pb2_grpc.ProviderServiceStub(channel), adapter)


async def _close(s: Stack) -> None:
    await s.channel.close()
    await s.server.stop(0)
    await s.adapter.aclose()
    await s.emulator.stop()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await _stack()
    yield s
    await _close(s)


def _req(**kw: object) -> provider_pb2.GenerateImageRequest:
    fields: dict[str, object] = dict(
        request_id="r-hf",
        model=SD21,
        prompt="an astronaut riding a horse",
        width=512,
        height=512,
        num_images=1,
    )
    fields.update(kw)
    return provider_pb2.GenerateImageRequest(**fields)  # type: ignore[arg-type]


async def test_raw_bytes_with_a_lying_content_type_are_sniffed(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("wrong_content_type", count=1))
    resp = await stack.stub.GenerateImage(_req(seed=42), timeout=10)
    img = Image.open(io.BytesIO(resp.images[0].data))
    assert (img.format, img.size) == ("PNG", (512, 512)), "JPEG labelled image/png is converted"
    assert resp.images[0].mime_type == "image/png" and resp.images[0].seed == 42
    call = stack.emulator.calls[-1]
    assert call.path == f"/hf-inference/models/{SD21}"
    assert call.headers["accept"] == "image/png"
    assert call.body == {
        "inputs": "an astronaut riding a horse",
        "parameters": {"width": 512, "height": 512, "seed": 42},
    }
    assert resp.usage.provider_job_id.startswith("Root=1-")
    # Emulated x-compute-time: 0.05 s per megapixel-step, 30 default steps.
    assert resp.usage.provider_seconds == pytest.approx(0.512 * 0.512 * 30 * 0.05, abs=1e-3)


async def test_jpeg_asked_and_served_is_passed_through_unchanged(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        _req(
            model=SDXL,
            width=1024,
            height=768,
            negative_prompt="blurry",
            steps=25,
            guidance_scale=5.0,
            output_format=image_pb2.IMAGE_FORMAT_JPEG,
        ),
        timeout=10,
    )
    assert Image.open(io.BytesIO(resp.images[0].data)).format == "JPEG"
    params = stack.emulator.calls[-1].body["parameters"]
    assert (params["negative_prompt"], params["num_inference_steps"], params["guidance_scale"]) == (
        "blurry",
        25,
        5.0,
    )
    assert isinstance(params["seed"], int), "a drawn seed is sent so the image is reproducible"
    assert resp.images[0].seed == params["seed"]


async def test_several_images_are_parallel_calls_with_consecutive_seeds(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(_req(num_images=3, seed=10), timeout=10)
    seeds = sorted(c.body["parameters"]["seed"] for c in stack.emulator.calls)
    assert seeds == [10, 11, 12]
    assert [i.seed for i in resp.images] == [10, 11, 12]
    assert len(resp.usage.provider_job_id.split(",")) == 3
    assert resp.usage.provider_seconds == pytest.approx(3 * 0.512 * 0.512 * 30 * 0.05, abs=3e-3)
    assert len({i.data for i in resp.images}) == 3


async def test_model_loading_is_unavailable_with_the_estimated_time(stack: Stack) -> None:
    stack.emulator.loading_model = SD21
    stack.emulator.estimated_time = 20.0
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE)
    assert err.retry_after_seconds == pytest.approx(20.0)
    assert "loading" in err.message
    stack.emulator.loading_model = None
    assert len((await stack.stub.GenerateImage(_req(), timeout=10)).images) == 1


async def test_monthly_credits_exhausted_is_out_of_credits(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("out_of_credits", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_OUT_OF_CREDITS,
    )
    assert "monthly included credits" in err.message
    assert err.metadata[reasons.META_HTTP_STATUS] == "402"


# hf-inference answers bytes inline: there is no result URL that could expire.
NATIVE: dict[str, Expect] = {**EXPECTED, "expired_url": Expect(None)}


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_every_fault_on_the_native_route(stack: Stack, kind: str) -> None:
    expect = NATIVE[kind]
    stack.emulator.faults.set(Fault(kind, retry_after=7.0))
    timeout = 1.5 if expect.timeout_fault else 10
    if expect.code is None:
        resp = await stack.stub.GenerateImage(_req(), timeout=timeout)
        assert Image.open(io.BytesIO(resp.images[0].data)).format == "PNG"
        return
    started = time.monotonic()
    err = await stack.fail(_req(), timeout=timeout)
    assert (err.code, err.reason) == (expect.code, expect.reason), err.message
    assert err.metadata[reasons.META_PROVIDER_MODEL] == SD21
    if expect.retry_info:
        assert err.retry_after_seconds == pytest.approx(7.0)
    if expect.timeout_fault:
        assert time.monotonic() - started < 2.25
        assert err.metadata[reasons.META_BILLABLE] == "true", "a sent synchronous call may bill"
    assert KEY not in err.message


async def test_flux_goes_through_the_router_to_together(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        _req(model=wire.FLUX_SCHNELL, width=768, height=512, seed=3), timeout=10
    )
    call = stack.emulator.calls[-1]
    assert call.path == "/together/v1/images/generations"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert (call.body["model"], call.body["response_format"], call.body["steps"]) == (
        "black-forest-labs/FLUX.1-schnell",
        "base64",
        4,
    )
    assert (resp.images[0].width, resp.images[0].height) == (768, 512)
    assert resp.usage.provider_seconds > 0 and resp.usage.provider_job_id


async def test_partner_refusal_passes_through_as_moderation(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("moderation", count=1))
    err = await stack.fail(_req(model=wire.FLUX_SCHNELL))
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_CONTENT_MODERATED,
    )


async def test_capabilities_and_bill_to_header() -> None:
    s = await _stack(bill_to="acme-org")
    try:
        describe = await s.stub.DescribeProvider(provider_pb2.DescribeProviderRequest())
        models = {m.id: m for m in describe.models}
        routes = {
            wire.partner_route(wire.FLUX_SCHNELL, p)
            for p in (wire.FAL, wire.NSCALE, wire.REPLICATE, wire.AUTO)
        }
        assert set(models) == {SD21, SDXL, wire.FLUX_SCHNELL, *routes}
        # nscale (and so auto) cannot honour steps: HF drops them on the way.
        assert not models[wire.partner_route(wire.FLUX_SCHNELL, wire.NSCALE)].capabilities.steps
        assert models[wire.partner_route(wire.FLUX_SCHNELL, wire.FAL)].capabilities.steps
        assert models[SD21].price_unit == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND
        assert models[wire.FLUX_SCHNELL].price_unit == catalog_pb2.PRICE_UNIT_MEGAPIXEL
        assert not models[wire.FLUX_SCHNELL].capabilities.negative_prompt
        assert models[SDXL].capabilities.negative_prompt
        await s.stub.GenerateImage(_req(), timeout=10)
        assert s.emulator.calls[-1].headers["x-hf-bill-to"] == "acme-org"
    finally:
        await _close(s)


def _resp(
    status: int,
    *,
    json: object = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    return httpx.Response(
        status,
        json=json,
        content=content,
        headers=headers,
        request=httpx.Request(
            "POST",
            "https://router.huggingface.co/hf-inference/models/x",
            headers={"authorization": f"Bearer {KEY}"},
        ),
    )


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (_resp(400, json={"error": "Input validation error"}), "Input validation error"),
        (_resp(400, json={"error": ["width: too big", "steps: too many"]}), "width: too big"),
        (
            _resp(400, json={"error": "invalid_grant", "error_description": "token expired"}),
            "token expired",
        ),
        (_resp(500, json={"errors": [{"message": "pipeline crashed"}]}), "pipeline crashed"),
        (_resp(422, json={"detail": "Input should be a valid integer"}), "valid integer"),
        (
            _resp(
                404,
                content=b"Not Found",
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            ),
            "[RepoNotFound] Repository not found",
        ),
        (_resp(401, json={"error": f"token {KEY} is invalid"}), "token [redacted] is invalid"),
    ],
)
def test_every_documented_error_shape_is_read(resp: httpx.Response, expected: str) -> None:
    message = wire.error_message(resp)
    assert expected in message
    assert KEY not in message


def test_loading_without_estimated_time_falls_back_to_the_table() -> None:
    assert wire.special_error(_resp(503, json={"error": "busy"}), "", wire.HF_INFERENCE) is None
    err = wire.special_error(
        _resp(503, json={"error": "Model x is currently loading", "estimated_time": 12.5}),
        "job",
        wire.HF_INFERENCE,
    )
    assert err is not None and err.retry_after_seconds == 12.5 and err.provider_job_id == "job"


def test_settings_read_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", KEY)
    monkeypatch.setenv("IMAGEGATE_HF_ADDR", "127.0.0.1:4321")
    settings = HuggingFaceSettings()
    assert settings.enabled and settings.addr == "127.0.0.1:4321"
    assert settings.effective_base_url == "https://router.huggingface.co"
    assert KEY not in repr(settings)
    monkeypatch.setenv("IMAGEGATE_HF_BASE_URL", "http://router.huggingface.co")
    with pytest.raises(ValueError, match="https"):
        HuggingFaceSettings()
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("IMAGEGATE_HF_BASE_URL")
    assert not HuggingFaceSettings().enabled
