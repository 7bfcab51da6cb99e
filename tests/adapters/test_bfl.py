"""BFL adapter against its emulator: moderation statuses, expiry, cross-host polling, task limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault
from imagegate.emulators.bfl import BflEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.download import check_api_url
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings

KEY = "bfl-test-key-31d4"


class Stack:
    """Emulator + adapter + gRPC server + stub."""

    def __init__(self, emulator: BflEmulator) -> None:
        self.emulator = emulator

    async def start(self, **settings: Any) -> Stack:
        base_url = await self.emulator.start()
        cfg = BflSettings(
            key=KEY,
            base_url=base_url,
            poll_interval_seconds=0.02,
            max_poll_interval_seconds=0.05,
            **settings,
        )
        telemetry = setup_telemetry("adapter-bfl")
        self.adapter = BflAdapter(cfg, telemetry=telemetry)
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
        "model": "flux-dev",
        "prompt": "a lighthouse at dusk",
        "width": 512,
        "height": 384,
        "num_images": 1,
        "output_format": image_pb2.IMAGE_FORMAT_PNG,
    }
    fields.update(overrides)
    return provider_pb2.GenerateImageRequest(**fields)


async def _stack(emulator: dict[str, Any] | None = None, **settings: Any) -> Stack:
    e = BflEmulator(key=KEY, poll_retry_after=0.02, **(emulator or {}))
    return await Stack(e).start(**settings)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await _stack()
    try:
        yield s
    finally:
        await s.close()


async def test_submit_then_poll_on_another_host(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(
        request(seed=11, steps=20, guidance_scale=3.0), timeout=10
    )
    submit = stack.emulator.calls_to("/v1/flux-dev", "POST")[0]
    assert submit.headers["x-key"] == KEY
    assert submit.headers["host"].startswith("127.0.0.1")
    assert submit.body | {"prompt": ""} == {
        "prompt": "",
        "width": 512,
        "height": 384,
        "output_format": "png",
        "safety_tolerance": 2,
        "prompt_upsampling": False,
        "steps": 20,
        "guidance": 3.0,
        "seed": 11,
    }
    polls = stack.emulator.calls_to("/v1/get_result", "GET")
    assert polls and all(p.headers["host"].startswith("localhost") for p in polls)
    assert all(p.headers["x-key"] == KEY for p in polls)
    task = next(iter(stack.emulator.tasks.values()))
    assert resp.usage.provider_job_id == task.id
    assert resp.usage.provider_seconds == pytest.approx(0.2)
    assert resp.images[0].seed == 11


async def test_stream_reports_progress_fractions(stack: Stack) -> None:
    events = [
        e
        async for e in stack.stub.StreamGenerateImage(
            provider_pb2.StreamGenerateImageRequest(request=request()), timeout=10
        )
    ]
    fractions = [e.progress.fraction for e in events if e.WhichOneof("event") == "progress"]
    assert fractions[0] == 0.0
    assert [f for f in fractions if f > 0] == [0.3, 0.7]
    assert events[-1].WhichOneof("event") == "result"


@pytest.mark.parametrize("status", ["Request Moderated", "Content Moderated"])
async def test_moderation_statuses_are_not_billable(status: str) -> None:
    s = await _stack({"moderation_status": status})
    try:
        s.emulator.faults.set(Fault("moderation"))
        err = await s.fail(request())
        assert (err.code, err.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.PROVIDER_CONTENT_MODERATED,
        )
        assert err.metadata["provider_status"] == status
        assert err.metadata[reasons.META_BILLABLE] == "false"
    finally:
        await s.close()


async def _while_pending(s: Stack, act: Any) -> ParsedStatus:
    call = asyncio.ensure_future(s.stub.GenerateImage(request(), timeout=10))
    await s.emulator.wait_until(lambda: bool(s.emulator.tasks))
    act(next(iter(s.emulator.tasks)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return parse_rpc_error(info.value)


async def test_task_not_found_and_error_statuses() -> None:
    s = await _stack({"latency": 30})
    try:
        err = await _while_pending(s, s.emulator.tasks.pop)
        assert err.reason == reasons.PROVIDER_BAD_RESPONSE
        assert err.metadata["provider_status"] == "Task not found"
        err = await _while_pending(s, lambda tid: s.emulator.fail(tid, {"error": "GPU fault"}))
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE)
        assert "GPU fault" in err.message
    finally:
        await s.close()


async def test_expired_sample_url_is_a_clean_error() -> None:
    s = await _stack({"sample_ttl": 0.0})
    try:
        err = await s.fail(request())
        assert (err.code, err.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            reasons.PROVIDER_BAD_RESPONSE,
        )
        assert "expired" in err.message
        assert err.metadata[reasons.META_BILLABLE] == "true"
        cdn = s.emulator.cdn_calls[0]
        assert "x-key" not in cdn.headers, "the key is never sent to the delivery host"
    finally:
        await s.close()


async def test_active_task_limit_gives_resource_exhausted_before_a_provider_429() -> None:
    s = await _stack({"latency": 1.0}, max_active_tasks=2)
    try:
        first = asyncio.ensure_future(s.stub.GenerateImage(request(num_images=2), timeout=10))
        await s.emulator.wait_until(lambda: len(s.emulator.tasks) == 2)
        err = await s.fail(request())
        assert (err.code, err.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            reasons.PROVIDER_CONCURRENCY_LIMITED,
        )
        assert err.retry_after_seconds == 1
        assert len(s.emulator.calls_to("/v1/flux-dev", "POST")) == 2
        resp = await first
        assert len(resp.images) == 2
        assert len(resp.usage.provider_job_id.split(",")) == 2
        assert s.adapter.active_tasks == 0
    finally:
        await s.close()


async def test_describe_reports_the_task_limit_and_capabilities(stack: Stack) -> None:
    resp = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    assert resp.max_concurrency == 24
    caps = {m.id: m.capabilities for m in resp.models}
    assert set(caps) == {
        "flux-dev",
        "flux-pro-1.1",
        "flux-kontext-pro",
        "flux-kontext-max",
        "flux-pro-1.0-fill",
    }
    assert caps["flux-kontext-pro"].max_reference_images == 4
    assert caps["flux-pro-1.0-fill"].inpainting and caps["flux-pro-1.0-fill"].input_image_required
    assert not caps["flux-dev"].image_to_image and not caps["flux-dev"].inpainting
    assert not caps["flux-pro-1.1"].steps and not caps["flux-pro-1.1"].guidance
    assert (caps["flux-dev"].min_side, caps["flux-dev"].max_side) == (256, 1440)
    assert caps["flux-dev"].side_multiple == 32


async def test_size_off_the_grid_is_refused_or_snapped(stack: Stack) -> None:
    err = await stack.fail(request(width=500, height=380))
    assert err.reason == reasons.PROVIDER_UNSUPPORTED_PARAMETER
    resp = await stack.stub.GenerateImage(
        request(width=500, height=380, allow_degradation=True), timeout=10
    )
    assert (resp.images[0].width, resp.images[0].height) == (512, 384)
    assert resp.deviations[0].field == "size"


def test_regions_and_overrides() -> None:
    assert BflSettings(key=KEY).effective_base_url == "https://api.bfl.ai"
    assert BflSettings(key=KEY, region="eu").effective_base_url == "https://api.eu.bfl.ai"
    assert BflSettings(key=KEY, region="us").effective_base_url == "https://api.us.bfl.ai"
    override = BflSettings(key=KEY, region="eu", base_url="http://127.0.0.1:9104")
    assert override.effective_base_url == "http://127.0.0.1:9104"
    with pytest.raises(ValueError, match="https"):
        BflSettings(key=KEY, base_url="http://api.bfl.ai")


def test_polling_url_must_be_a_bfl_host() -> None:
    ok = "https://api.us1.bfl.ai/v1/get_result?id=abc"
    hosts = (".bfl.ai",)
    assert check_api_url(ok, base_url="https://api.bfl.ai", allowed_hosts=hosts, loopback_ok=False)
    for bad in ("https://evil.example/v1/get_result?id=abc", "http://api.us1.bfl.ai/v1/x"):
        with pytest.raises(ProviderError) as info:
            check_api_url(
                bad, base_url="https://api.bfl.ai", allowed_hosts=hosts, loopback_ok=False
            )
        assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE


async def test_one_moderated_task_of_three_bills_the_two_siblings_as_bfl_does() -> None:
    s = await _stack()
    try:
        s.emulator.faults.set(Fault("moderation", count=1))
        err = await s.fail(request(num_images=3))
        assert err.reason == reasons.PROVIDER_CONTENT_MODERATED
        # Every task was submitted before any was polled; BFL bills the two not moderated.
        assert len(s.emulator.tasks) == 3
        assert err.metadata[reasons.META_BILLABLE] == "true"
        assert err.metadata[reasons.META_BILLED_IMAGES] == "2"
        assert float(err.metadata[reasons.META_BILLED_MEGAPIXELS]) == pytest.approx(
            2 * 512 * 384 / 1e6
        )
        assert s.emulator.billed_micros() == 2 * 25_000
        assert set(err.metadata[reasons.META_PROVIDER_JOB_ID].split(",")) <= set(s.emulator.tasks)
    finally:
        await s.close()


async def test_every_task_moderated_bills_nothing() -> None:
    s = await _stack()
    try:
        s.emulator.faults.set(Fault("moderation"))
        err = await s.fail(request(num_images=2))
        assert err.metadata[reasons.META_BILLABLE] == "false"
        assert err.metadata[reasons.META_BILLED_IMAGES] == "0"
        assert s.emulator.billed_micros() == 0
    finally:
        await s.close()
