"""Replicate adapter against its emulator: Prefer: wait, processing-with-output, no blind retry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault
from imagegate.emulators.replicate import NSFW_ERROR, SDXL_VERSION, ReplicateEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.replicate.adapter import FLUX_SIZES, ReplicateAdapter
from services.replicate.config import ReplicateSettings

KEY = "r8_replicateTestKey0a1b2c"
CREATE = "/v1/models/black-forest-labs/flux-schnell/predictions"


class Stack:
    """Emulator + adapter + gRPC server + stub."""

    def __init__(self, emulator: ReplicateEmulator) -> None:
        self.emulator = emulator

    async def start(self) -> Stack:
        base_url = await self.emulator.start()
        cfg = ReplicateSettings(
            key=KEY, base_url=base_url, poll_interval_seconds=0.02, max_poll_interval_seconds=0.05
        )
        telemetry = setup_telemetry("adapter-replicate")
        self.adapter = ReplicateAdapter(cfg, telemetry=telemetry)
        self.server, _ = await start_adapter_server(
            self.adapter, address="127.0.0.1:0", telemetry=telemetry
        )
        self.channel = create_channel(self.server.address)
        self.stub = provider_pb2_grpc.ProviderServiceStub(self.channel)
        return self

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.adapter.aclose()
        await self.emulator.stop()

    async def fail(
        self, req: provider_pb2.GenerateImageRequest, timeout: float = 10
    ) -> ParsedStatus:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.stub.GenerateImage(req, timeout=timeout)
        return parse_rpc_error(info.value)


def request(**overrides: Any) -> provider_pb2.GenerateImageRequest:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "model": "black-forest-labs/flux-schnell",
        "prompt": "a lighthouse at dusk",
        "width": 1344,
        "height": 768,
        "num_images": 1,
        "output_format": image_pb2.IMAGE_FORMAT_PNG,
    }
    fields.update(overrides)
    return provider_pb2.GenerateImageRequest(**fields)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await Stack(ReplicateEmulator(key=KEY)).start()
    try:
        yield s
    finally:
        await s.close()


async def _stack(**emulator: Any) -> Stack:
    return await Stack(ReplicateEmulator(key=KEY, **emulator)).start()


async def test_prefer_wait_answer_used_without_polling(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(request(seed=5), timeout=10)
    create = stack.emulator.calls_to(CREATE, "POST")[0]
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["prefer"] in ("wait=8", "wait=9")
    assert create.headers["cancel-after"].endswith("s")
    assert create.body["input"]["aspect_ratio"] == "16:9"
    assert create.body["input"]["megapixels"] == "1"
    assert create.body["input"]["seed"] == 5
    assert create.body["input"]["go_fast"] is False
    assert stack.emulator.calls_to("/v1/predictions/", "GET") == []
    pred = next(iter(stack.emulator.predictions.values()))
    assert resp.usage.provider_job_id == pred.id
    assert resp.usage.provider_seconds == pytest.approx(pred.metrics["predict_time"])
    assert (resp.images[0].width, resp.images[0].height) == (1344, 768)


async def test_processing_with_output_is_usable_while_polling() -> None:
    s = await _stack(processing_with_output=True, honour_wait=False, latency=0.2)
    try:
        resp = await s.stub.GenerateImage(request(), timeout=10)
        pred = next(iter(s.emulator.predictions.values()))
        assert pred.status == "processing", "never reached succeeded, yet the output was used"
        assert len(resp.images) == 1
        assert s.emulator.calls_to(f"/v1/predictions/{pred.id}", "GET")
    finally:
        await s.close()


async def test_create_that_hangs_is_not_retried_and_may_be_billed(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("hang", count=1))
    err = await stack.fail(request(), timeout=1.5)
    assert (err.code, err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT)
    assert len(stack.emulator.calls_to(CREATE, "POST")) == 1
    assert err.metadata[reasons.META_BILLABLE] == "true"
    assert "not retried" in err.message


async def test_unavailable_create_is_not_retried(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("error_503", count=1, retry_after=4))
    err = await stack.fail(request())
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE)
    assert err.retry_after_seconds == 4
    assert len(stack.emulator.calls_to(CREATE, "POST")) == 1


async def test_no_prefer_wait_when_less_than_a_second_would_be_left(stack: Stack) -> None:
    # Only the create's headers matter here; on a loaded machine the rest may miss the deadline.
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stack.stub.GenerateImage(request(), timeout=1.8)
    create = stack.emulator.calls_to(CREATE, "POST")[0]
    assert "prefer" not in create.headers
    assert create.headers["cancel-after"] == "1s"


async def test_cancels_at_the_deadline() -> None:
    s = await _stack(honour_wait=False)
    try:
        s.emulator.faults.set(Fault("never_complete"))
        err = await s.fail(request(), timeout=1.5)
        assert err.reason == reasons.PROVIDER_TIMEOUT
        pred = next(iter(s.emulator.predictions.values()))
        assert s.emulator.calls_to(f"/v1/predictions/{pred.id}/cancel", "POST")
        assert pred.status == "canceled" and pred.canceled_by_client
        assert err.metadata[reasons.META_PROVIDER_JOB_ID] == pred.id
    finally:
        await s.close()


async def test_nsfw_failure_is_moderation(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("moderation"))
    err = await stack.fail(request())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_CONTENT_MODERATED,
    )
    assert NSFW_ERROR[:20] in err.message


async def test_throttle_prose_gives_retry_info(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("rate_limit"))
    err = await stack.fail(request())
    assert (err.code, err.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.PROVIDER_RATE_LIMITED,
    )
    assert err.retry_after_seconds == 30


async def test_insufficient_credit_402(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("out_of_credits"))
    err = await stack.fail(request())
    assert err.reason == reasons.PROVIDER_OUT_OF_CREDITS
    assert err.metadata[reasons.META_HTTP_STATUS] == "402"


async def test_size_maps_to_aspect_ratio_or_reports_deviation(stack: Stack) -> None:
    err = await stack.fail(request(width=700, height=500))
    assert err.reason == reasons.PROVIDER_UNSUPPORTED_PARAMETER
    resp = await stack.stub.GenerateImage(
        request(width=700, height=500, allow_degradation=True), timeout=10
    )
    assert [(d.field, d.requested, d.delivered) for d in resp.deviations] == [
        ("size", "700x500", "608x416")
    ]
    assert (resp.images[0].width, resp.images[0].height) == (608, 416)
    inp = stack.emulator.calls_to(CREATE, "POST")[-1].body["input"]
    assert (inp["aspect_ratio"], inp["megapixels"]) == ("3:2", "0.25")


async def test_every_declared_flux_size_maps_back() -> None:
    for (w, h), (mp, ar) in FLUX_SIZES.items():
        assert mp in ("1", "0.25")
        a, b = (int(x) for x in ar.split(":"))
        assert abs(w / h - a / b) < 0.12, (w, h, ar)


async def test_flux_pro_single_string_output_and_custom_size(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        request(model="black-forest-labs/flux-pro", width=800, height=608, steps=20),
        timeout=10,
    )
    assert (resp.images[0].width, resp.images[0].height) == (800, 608)
    inp = stack.emulator.calls_to("/flux-pro/predictions", "POST")[0].body["input"]
    assert inp["aspect_ratio"] == "custom" and inp["steps"] == 20


async def test_sdxl_runs_by_version_with_negative_prompt(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        request(
            model="stability-ai/sdxl", width=768, height=512, negative_prompt="blur", num_images=2
        ),
        timeout=10,
    )
    assert len(resp.images) == 2
    create = stack.emulator.calls_to("/v1/predictions", "POST")[0]
    assert create.body["version"] == SDXL_VERSION
    assert create.body["input"]["negative_prompt"] == "blur"


async def test_result_url_gone_is_clean_error(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("expired_url"))
    err = await stack.fail(request())
    assert err.reason == reasons.PROVIDER_BAD_RESPONSE
    assert "expired" in err.message
    assert err.metadata[reasons.META_BILLABLE] == "true"
