"""The diffusers worker through the Router: real loading, denoising, progress, cancellation."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from pydantic import SecretStr

from imagegate.common.v1 import catalog_pb2
from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import usage_micros
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.router.v1 import router_pb2
from imagegate.telemetry import setup_telemetry
from services.diffusers.adapter import DiffusersAdapter
from services.diffusers.config import DiffusersSettings
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import RouterStack, bearer, start_stack

SD21 = "stabilityai/stable-diffusion-2-1"
HF_KEY = "hf_selfhostOverflowToken3b1c"
# Many seconds on any CPU: the most steps the Router accepts, at 16 times the pixels.
SLOW: dict[str, object] = {"steps": 150, "width": 256, "height": 256}


def _seconds_price(provider: str, micros: float, seconds_per_image: float) -> metering_pb2.Price:
    # Quotes and quota holds of compute-second prices use the assumed seconds per image, as the
    # real catalog requires (a hold of zero would cap the tenant charge at zero).
    out = price(provider, SD21, micros, catalog_pb2.PRICE_UNIT_COMPUTE_SECOND)
    out.assumed_seconds_per_image = seconds_per_image
    return out


PRICES = [_seconds_price("diffusers", 333, 2.0), _seconds_price("huggingface", 120, 5.5)]


def diffusers_adapter(model_dir: Path, **settings: object) -> DiffusersAdapter:
    """An adapter with the tiny pipeline loaded on the CPU."""
    adapter = DiffusersAdapter(DiffusersSettings(model_path=model_dir, device="cpu", **settings))
    adapter.load()
    return adapter


@pytest.fixture
async def stack(tiny_model_dir: Path) -> AsyncIterator[RouterStack]:
    s = await start_stack({"diffusers": diffusers_adapter(tiny_model_dir)}, prices=PRICES)
    yield s
    await s.stop()


def request(**fields: object) -> router_pb2.GenerateImageRequest:
    """An sd-2.1 request sized for the tiny pipeline."""
    values: dict[str, object] = {
        "prompt": "a lighthouse at dusk",
        "model": "sd-2.1",
        "allowed_providers": ["diffusers"],
        "width": 64,
        "height": 64,
        "steps": 4,
        **fields,
    }
    return router_pb2.GenerateImageRequest(**values)  # type: ignore[arg-type]


async def wait_until_idle(adapter: DiffusersAdapter) -> None:
    """Returns once the device runs nothing and nothing waits for it."""
    assert await adapter.worker.wait_until("idle", timeout=60)


async def test_router_returns_decodable_images_from_the_tiny_pipeline(stack: RouterStack) -> None:
    resp = await stack.stub.GenerateImage(
        request(request_id="sh-1", num_images=2, seed=11, negative_prompt="fog", guidance_scale=6),
        metadata=bearer("key-pro"),
        timeout=60,
    )
    assert resp.provider == "diffusers" and resp.provider_model == SD21
    assert [i.seed for i in resp.images] == [11, 12]
    for image in resp.images:
        with Image.open(io.BytesIO(image.data)) as img:
            img.load()
            assert img.size == (64, 64) and img.format == "PNG"
    # Compute seconds measured on the device, priced per compute-second by Metering's catalog.
    assert resp.usage.provider_seconds > 0
    record = stack.metering.records[("t_pro", "sh-1")]
    assert record.provider == "diffusers" and record.images == 2
    assert resp.cost_micros == usage_micros(PRICES[0], resp.usage) > 0


async def test_same_seed_same_image_and_another_seed_another(stack: RouterStack) -> None:
    async def one(seed: int, rid: str) -> bytes:
        resp = await stack.stub.GenerateImage(
            request(request_id=rid, seed=seed), metadata=bearer("key-pro"), timeout=60
        )
        return bytes(resp.images[0].data)

    first, again, other = await one(5, "seed-a"), await one(5, "seed-b"), await one(6, "seed-c")
    assert first == again
    assert first != other


async def test_stream_reports_progress_after_every_denoising_step(stack: RouterStack) -> None:
    fractions: list[float] = []
    result = None
    async for event in stack.stub.StreamGenerateImage(
        router_pb2.StreamGenerateImageRequest(request=request(request_id="sh-stream", steps=5)),
        metadata=bearer("key-pro"),
        timeout=60,
    ):
        if event.HasField("progress") and event.progress.state == "DENOISING":
            assert event.progress.provider == "diffusers"
            fractions.append(round(event.progress.fraction, 3))
        if event.HasField("result"):
            result = event.result
    assert fractions == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert result is not None and len(result.images) == 1


async def test_a_short_deadline_stops_a_long_run_between_steps_and_frees_the_device(
    stack: RouterStack,
) -> None:
    adapter = stack.adapters["diffusers"]
    assert isinstance(adapter, DiffusersAdapter)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateImage(
            request(request_id="sh-slow", **SLOW), metadata=bearer("key-pro"), timeout=1
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The run stopped between two steps instead of denoising the remaining ones.
    await wait_until_idle(adapter)
    assert adapter.worker.interrupted == 1
    resp = await stack.stub.GenerateImage(
        request(request_id="sh-after"), metadata=bearer("key-pro"), timeout=60
    )
    assert resp.provider == "diffusers" and len(resp.images) == 1


async def test_steps_beyond_the_configured_limit_are_refused_not_changed(
    tiny_model_dir: Path,
) -> None:
    adapter = diffusers_adapter(tiny_model_dir, max_steps=8)
    telemetry = setup_telemetry("diffusers-test")
    running, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GenerateImage(
                    provider_pb2.GenerateImageRequest(
                        request_id="sh-steps",
                        model=SD21,
                        prompt="x",
                        width=64,
                        height=64,
                        num_images=1,
                        steps=9,
                    ),
                    timeout=30,
                )
        parsed = parse_rpc_error(caught.value)
        assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert parsed.reason == reasons.PROVIDER_UNSUPPORTED_PARAMETER
        assert parsed.metadata["fields"] == "steps"
        assert adapter.worker.completed == 0
    finally:
        await running.stop(grace=0.1)
        await adapter.aclose()
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("max_queue", "why"),
    [(0, "the wait list is full"), (4, "the work ahead outlasts the deadline")],
)
async def test_a_busy_device_overflows_to_a_hosted_provider_within_the_deadline(
    tiny_model_dir: Path, max_queue: int, why: str
) -> None:
    emulator = HuggingFaceEmulator(key=HF_KEY)
    base_url = await emulator.start()
    diffusers = diffusers_adapter(tiny_model_dir, max_queue=max_queue)
    hosted = HuggingFaceAdapter(HuggingFaceSettings(key=SecretStr(HF_KEY), base_url=base_url))
    s = await start_stack({"diffusers": diffusers, "huggingface": hosted}, prices=PRICES)
    try:
        busy = asyncio.ensure_future(
            s.stub.GenerateImage(
                request(request_id="sh-busy", **SLOW),
                metadata=bearer("key-pro"),
                timeout=60,
            )
        )
        # Once a step has run, the device knows how long the rest of the busy run takes.
        assert await diffusers.worker.wait_until("measured", timeout=60)
        resp = await s.stub.GenerateImage(
            request(request_id="sh-overflow", allowed_providers=[], width=512, height=512),
            metadata=bearer("key-pro"),
            timeout=5,
        )
        assert resp.provider == "huggingface"
        assert [(a.provider, a.outcome) for a in resp.attempts] == [
            ("diffusers", router_pb2.ATTEMPT_OUTCOME_OVERLOADED),
            ("huggingface", router_pb2.ATTEMPT_OUTCOME_SUCCEEDED),
        ]
        # The busy run is still on the device: the overflow did not wait for it.
        assert diffusers.worker.running == 1 and not busy.done()
        assert diffusers.worker.waiting == 0, why
        refusal = resp.attempts[0].error_message
        assert ("the deadline is in" in refusal) == bool(max_queue), refusal
        busy.cancel()
        await wait_until_idle(diffusers)
        assert diffusers.worker.interrupted == 1
    finally:
        await s.stop()
        await emulator.stop()
