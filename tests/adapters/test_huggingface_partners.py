"""HF partner routes: the request each partner gets, "auto" following the account's order."""

from __future__ import annotations

import grpc
import pytest
from pydantic import SecretStr

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault
from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.huggingface import wire
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings

KEY = "hf_partnerSecretToken9f8e7d6c"
FAL_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.FAL)
NSCALE_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.NSCALE)
AUTO_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.AUTO)
REPLICATE_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.REPLICATE)


class Served:
    def __init__(self, emulator: HuggingFaceEmulator, stub, closers) -> None:
        self.emulator, self.stub, self._closers = emulator, stub, closers

    async def generate(self, model: str, **kw: object) -> provider_pb2.GenerateImageResponse:
        fields: dict[str, object] = dict(
            request_id="r", model=model, prompt="a fox", width=512, height=512, num_images=1
        )
        fields.update(kw)
        return await self.stub.GenerateImage(
            provider_pb2.GenerateImageRequest(
                output_format=image_pb2.IMAGE_FORMAT_PNG,
                **fields,  # type: ignore[arg-type]
            ),
            timeout=10,
        )

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


async def serve(order: list[str] | None = None, **settings: object) -> Served:
    emulator = HuggingFaceEmulator(key=KEY)
    if order is not None:
        emulator.provider_order = order
    base = await emulator.start()
    telemetry = setup_telemetry("test-hf-partners")
    adapter = HuggingFaceAdapter(
        HuggingFaceSettings(key=SecretStr(KEY), base_url=base, hub_url=base, **settings),  # type: ignore[arg-type]
        telemetry=telemetry,
    )
    server, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    channel = create_channel(server.address)
    return Served(
        emulator,
        provider_pb2_grpc.ProviderServiceStub(channel),
        [emulator.stop, adapter.aclose, lambda: server.stop(0), channel.close],
    )


async def test_fal_route_posts_fal_input_with_the_hf_token_and_inline_images() -> None:
    s = await serve()
    try:
        resp = await s.generate(FAL_ROUTE, num_images=2, seed=7, width=768, height=512)
        call = s.emulator.calls_to("/fal-ai/fal-ai/flux/schnell", "POST")[-1]
        assert call.headers["authorization"] == f"Bearer {KEY}"
        assert call.body["image_size"] == {"width": 768, "height": 512}
        assert call.body["sync_mode"] is True and call.body["num_images"] == 2
        assert [(i.width, i.height) for i in resp.images] == [(768, 512)] * 2
        assert not s.emulator.cdn_calls  # data URIs: nothing fetched from a third host
    finally:
        await s.close()


async def test_nscale_route_sends_size_and_b64_json_and_never_steps() -> None:
    s = await serve()
    try:
        resp = await s.generate(
            NSCALE_ROUTE, width=640, height=384, steps=4, allow_degradation=True
        )
        call = s.emulator.calls_to("/nscale/v1/images/generations", "POST")[-1]
        assert call.body["size"] == "640x384" and call.body["response_format"] == "b64_json"
        assert "steps" not in call.body and "num_inference_steps" not in call.body
        assert call.body["model"] == wire.FLUX_SCHNELL
        assert [d.field for d in resp.deviations] == ["steps"]
    finally:
        await s.close()


async def test_replicate_route_creates_an_official_prediction_through_the_router() -> None:
    s = await serve(poll_interval_seconds=0.02, max_poll_interval_seconds=0.05)
    try:
        # Answer the create before the prediction is done: the adapter must poll.
        s.emulator._replicate.honour_wait = False
        s.emulator._replicate.latency = 0.2
        resp = await s.generate(REPLICATE_ROUTE, width=1024, height=1024, seed=3)
        create = s.emulator.calls_to(
            "/replicate/v1/models/black-forest-labs/flux-schnell/predictions", "POST"
        )[-1]
        assert create.headers["authorization"] == f"Bearer {KEY}"
        assert create.headers["prefer"].startswith("wait")
        assert create.body["input"]["aspect_ratio"] == "1:1"
        assert create.body["input"]["seed"] == 3
        assert s.emulator.calls_to("/replicate/v1/predictions/", "GET")  # polled via the router
        assert resp.model == REPLICATE_ROUTE and (resp.images[0].width, resp.images[0].height) == (
            1024,
            1024,
        )
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("order", "path"),
    [
        (["fal-ai", "together"], "/fal-ai/"),
        (["replicate", "nscale", "fal-ai"], "/nscale/"),
        (["together", "fal-ai"], "/together/"),
    ],
)
async def test_auto_takes_the_first_partner_of_the_account_order_it_speaks(
    order: list[str], path: str
) -> None:
    s = await serve(order)
    try:
        resp = await s.generate(AUTO_ROUTE)
        provider_calls = [c for c in s.emulator.calls if not c.path.startswith("/api/")]
        assert [c.path.startswith(path) for c in provider_calls] == [True]
        assert resp.model == AUTO_ROUTE
        assert resp.usage.provider_job_id.startswith(path.strip("/") + ":")
        hub = s.emulator.calls_to("/api/models/black-forest-labs/FLUX.1-schnell", "GET")
        assert len(hub) == 1 and hub[0].headers["authorization"] == f"Bearer {KEY}"
    finally:
        await s.close()


async def test_auto_asks_the_hub_once_within_the_ttl_and_again_after_it() -> None:
    s = await serve(["fal-ai"], mapping_ttl_seconds=0)
    try:
        await s.generate(AUTO_ROUTE)
        s.emulator.provider_order = ["nscale"]
        await s.generate(AUTO_ROUTE)
        assert len(s.emulator.calls_to("/api/models/", "GET")) == 2
        assert s.emulator.calls[-1].path.startswith("/nscale/")
    finally:
        await s.close()
    cached = await serve(["fal-ai"])
    try:
        await cached.generate(AUTO_ROUTE)
        cached.emulator.provider_order = ["nscale"]
        await cached.generate(AUTO_ROUTE)
        assert len(cached.emulator.calls_to("/api/models/", "GET")) == 1
        assert cached.emulator.calls[-1].path.startswith("/fal-ai/")
    finally:
        await cached.close()


async def test_a_fixed_provider_order_skips_the_hub() -> None:
    s = await serve(["together"], provider_order="nscale, fal-ai")
    try:
        await s.generate(AUTO_ROUTE)
        assert s.emulator.calls_to("/api/models/") == []
        assert s.emulator.calls[-1].path == "/nscale/v1/images/generations"
    finally:
        await s.close()


async def test_auto_with_no_spoken_partner_in_the_order_is_a_clear_refusal() -> None:
    s = await serve(["replicate"])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.generate(AUTO_ROUTE)
        parsed = parse_rpc_error(info.value)
        assert parsed.reason == reasons.PROVIDER_INVALID_REQUEST
        assert "replicate" in parsed.message and "fal-ai" in parsed.message
    finally:
        await s.close()


async def test_a_partner_rate_limit_is_scoped_to_its_route_but_hf_inference_is_not() -> None:
    s = await serve()
    try:
        s.emulator.faults.set(Fault("rate_limit", count=1, retry_after=3))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.generate(FAL_ROUTE)
        parsed = parse_rpc_error(info.value)
        assert parsed.reason == reasons.PROVIDER_RATE_LIMITED
        assert parsed.metadata[reasons.META_BREAKER_SCOPE] == "model"
        assert parsed.metadata["partner"] == "fal-ai"
        s.emulator.faults.set(Fault("rate_limit", count=1, retry_after=3))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.generate(wire.SD21)
        parsed = parse_rpc_error(info.value)
        assert parsed.reason == reasons.PROVIDER_RATE_LIMITED
        assert reasons.META_BREAKER_SCOPE not in parsed.metadata
    finally:
        await s.close()
