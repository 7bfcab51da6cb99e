"""fal adapter against its emulator: queue polling, queue-position progress, cancel, mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault
from imagegate.emulators.fal import FalEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings

KEY = "fal-test-key:9d8c7b"


class Stack:
    """Emulator + adapter + gRPC server + stub."""

    def __init__(self, emulator: FalEmulator) -> None:
        self.emulator = emulator

    async def start(self, **settings: Any) -> Stack:
        base_url = await self.emulator.start()
        cfg = FalSettings(
            key=KEY,
            base_url=base_url,
            poll_interval_seconds=0.02,
            max_poll_interval_seconds=0.05,
            **settings,
        )
        self.adapter = FalAdapter(cfg, telemetry=setup_telemetry("adapter-fal"))
        self.server, _ = await start_adapter_server(
            self.adapter, address="127.0.0.1:0", telemetry=setup_telemetry("adapter-fal")
        )
        self.channel = create_channel(self.server.address)
        self.stub = provider_pb2_grpc.ProviderServiceStub(self.channel)
        return self

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.adapter.aclose()
        await self.emulator.stop()


def request(**overrides: Any) -> provider_pb2.GenerateImageRequest:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "model": "fal-ai/flux/schnell",
        "prompt": "a lighthouse at dusk",
        "width": 512,
        "height": 384,
        "num_images": 1,
        "output_format": image_pb2.IMAGE_FORMAT_PNG,
    }
    fields.update(overrides)
    return provider_pb2.GenerateImageRequest(**fields)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await Stack(FalEmulator(key=KEY, queue_depth=2)).start()
    try:
        yield s
    finally:
        await s.close()


async def test_queue_position_becomes_progress_then_result(stack: Stack) -> None:
    events = [
        e
        async for e in stack.stub.StreamGenerateImage(
            provider_pb2.StreamGenerateImageRequest(request=request()), timeout=10
        )
    ]
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    queued = [p.queue_position for p in progress if p.state == "IN_QUEUE"]
    assert queued[0] == 2 and queued[-1] == 0
    assert queued == sorted(queued, reverse=True)
    assert "IN_PROGRESS" in [p.state for p in progress]
    job_id = next(iter(stack.emulator.jobs))
    assert {p.provider_job_id for p in progress} == {job_id}
    assert events[-1].WhichOneof("event") == "result"
    assert events[-1].result.usage.provider_job_id == job_id


async def test_polls_the_returned_urls_and_reports_inference_time(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(request(seed=7, steps=3, guidance_scale=2.5), timeout=10)
    job = next(iter(stack.emulator.jobs.values()))
    submit = stack.emulator.calls_to("/fal-ai/flux/schnell", "POST")[0]
    assert submit.headers["authorization"] == f"Key {KEY}"
    assert submit.body["image_size"] == {"width": 512, "height": 384}
    assert submit.body["num_inference_steps"] == 3
    assert submit.body["guidance_scale"] == 2.5
    assert submit.body["seed"] == 7
    assert submit.body["output_format"] == "png"
    assert int(submit.headers["x-fal-request-timeout"]) <= 10
    # Status and result use owner/app only, as returned by submit (the /schnell subpath is dropped).
    assert stack.emulator.calls_to(f"/fal-ai/flux/requests/{job.id}/status", "GET")
    assert stack.emulator.calls_to(f"/fal-ai/flux/requests/{job.id}", "GET")
    assert resp.usage.provider_seconds == pytest.approx(job.inference_time)
    assert resp.images[0].seed == 7


async def test_cancels_with_put_when_the_deadline_passes(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("never_complete"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(), timeout=1.5)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT)
    job = next(iter(stack.emulator.jobs.values()))
    assert err.metadata[reasons.META_PROVIDER_JOB_ID] == job.id
    assert err.metadata[reasons.META_BILLABLE] == "true"
    assert stack.emulator.calls_to(f"/requests/{job.id}/cancel", "PUT")
    assert job.cancelled


async def test_content_policy_422_detail_is_moderation(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("moderation"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(), timeout=10)
    err = parse_rpc_error(info.value)
    assert err.reason == reasons.PROVIDER_CONTENT_MODERATED
    assert err.metadata[reasons.META_HTTP_STATUS] == "422"
    assert "content policy" in err.message


async def test_nsfw_flagged_result_is_moderation(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    render = FalEmulator._render

    def flagged(self: FalEmulator, job: Any) -> dict[str, Any]:
        out = render(self, job)
        out["has_nsfw_concepts"] = [True]
        return out

    monkeypatch.setattr(FalEmulator, "_render", flagged)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(), timeout=10)
    err = parse_rpc_error(info.value)
    assert err.reason == reasons.PROVIDER_CONTENT_MODERATED
    assert err.metadata[reasons.META_BILLABLE] == "true"


async def test_locked_account_is_out_of_credits(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("out_of_credits"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(), timeout=10)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_OUT_OF_CREDITS,
    )
    assert err.metadata[reasons.META_HTTP_STATUS] == "403"
    assert "Exhausted balance" in err.message


async def test_steps_outside_range_refused_or_clamped(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(steps=30), timeout=10)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.PROVIDER_UNSUPPORTED_PARAMETER,
    )
    assert stack.emulator.calls == []
    resp = await stack.stub.GenerateImage(request(steps=30, allow_degradation=True), timeout=10)
    assert [(d.field, d.requested, d.delivered) for d in resp.deviations] == [("steps", "30", "12")]
    assert (
        stack.emulator.calls_to("/fal-ai/flux/schnell", "POST")[0].body["num_inference_steps"] == 12
    )


async def test_negative_prompt_only_where_supported(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        request(model="fal-ai/fast-sdxl", negative_prompt="blurry", width=512, height=512),
        timeout=10,
    )
    assert resp.model == "fal-ai/fast-sdxl"
    assert (
        stack.emulator.calls_to("/fal-ai/fast-sdxl", "POST")[0].body["negative_prompt"] == "blurry"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request(negative_prompt="blurry"), timeout=10)
    assert parse_rpc_error(info.value).reason == reasons.PROVIDER_UNSUPPORTED_PARAMETER


async def test_describe_declares_capabilities(stack: Stack) -> None:
    resp = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    caps = {m.id: m.capabilities for m in resp.models}
    assert set(caps) == {
        "fal-ai/flux/schnell",
        "fal-ai/flux/dev",
        "fal-ai/flux-pro/v1.1",
        "fal-ai/fast-sdxl",
        "fal-ai/flux/dev/image-to-image",
        "fal-ai/flux-pro/kontext",
        "fal-ai/flux-pro/v1/fill",
    }
    i2i = caps["fal-ai/flux/dev/image-to-image"]
    assert i2i.image_to_image and i2i.strength and i2i.input_image_required
    assert caps["fal-ai/flux-pro/kontext"].max_reference_images == 4
    assert caps["fal-ai/flux-pro/v1/fill"].inpainting
    assert not caps["fal-ai/flux/dev"].image_to_image
    assert not caps["fal-ai/flux-pro/v1.1"].steps
    assert caps["fal-ai/fast-sdxl"].negative_prompt
    assert not caps["fal-ai/flux/schnell"].negative_prompt


async def test_webp_converted_from_png_and_measured(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        request(output_format=image_pb2.IMAGE_FORMAT_WEBP), timeout=10
    )
    assert resp.images[0].data[8:12] == b"WEBP"
    assert stack.emulator.calls_to("/fal-ai/flux/schnell", "POST")[0].body["output_format"] == "png"


def test_settings_never_show_the_key() -> None:
    settings = FalSettings(key=KEY)
    assert KEY not in repr(settings)
    assert KEY not in str(settings.model_dump())
    assert settings.effective_base_url == "https://queue.fal.run"
    with pytest.raises(ValueError, match="https"):
        FalSettings(key=KEY, base_url="http://fal.example.com")
