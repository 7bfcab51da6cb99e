"""Self-hosted first: own capacity is tried before hosted providers, whatever the preference."""

from __future__ import annotations

import pytest

from imagegate.common.v1 import catalog_pb2
from imagegate.emulators.comfyui import ComfyUIEmulator
from imagegate.grpckit import reasons
from imagegate.providerkit.errors import ProviderError
from imagegate.router.v1 import router_pb2
from services.comfyui.adapter import ComfyUIAdapter
from services.comfyui.config import ComfyUISettings
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import bearer, start_stack

SD21 = "stabilityai/stable-diffusion-2-1"
PRO = bearer("key-pro")


async def test_budget_keeps_self_hosted_first_even_when_a_hosted_quote_is_lower() -> None:
    own = ControllableAdapter("diffusers", [spec(SD21)])
    hosted = ControllableAdapter("huggingface", [spec(SD21)])
    s = await start_stack(
        {"diffusers": own, "huggingface": hosted},
        prices=[
            price("diffusers", SD21, 5000, catalog_pb2.PRICE_UNIT_IMAGE),
            price("huggingface", SD21, 100, catalog_pb2.PRICE_UNIT_IMAGE),
        ],
    )
    try:
        req = router_pb2.GenerateImageRequest(
            prompt="x", preference=router_pb2.PREFERENCE_BUDGET, width=512, height=512
        )
        est = await s.stub.EstimateCost(router_pb2.EstimateCostRequest(request=req), metadata=PRO)
        eligible = [c.provider for c in est.candidates if not c.skip_reason]
        assert eligible == ["diffusers", "huggingface"]
        resp = await s.stub.GenerateImage(req, metadata=PRO, timeout=10)
        assert resp.provider == "diffusers" and hosted.calls == []
    finally:
        await s.stop()


async def test_an_explicit_model_tries_self_hosted_then_overflows_on_refusal() -> None:
    own = ControllableAdapter("diffusers", [spec(SD21)]).then(
        ProviderError(reasons.PROVIDER_CONCURRENCY_LIMITED, "queue full", retry_after_seconds=2)
    )
    hosted = ControllableAdapter("huggingface", [spec(SD21)])
    s = await start_stack({"diffusers": own, "huggingface": hosted})
    try:
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(prompt="x", model="sd-2.1", width=512, height=512),
            metadata=PRO,
            timeout=10,
        )
        assert [a.provider for a in resp.attempts] == ["diffusers", "huggingface"]
        assert resp.attempts[0].outcome == router_pb2.ATTEMPT_OUTCOME_OVERLOADED
        assert resp.provider == "huggingface"
    finally:
        await s.stop()


async def test_comfyui_serves_sdxl_through_the_router_at_zero_cost_with_step_progress() -> None:
    emulator = ComfyUIEmulator()
    base_url = await emulator.start()
    s = await start_stack(
        {"comfyui": ComfyUIAdapter(ComfyUISettings(base_url=base_url))},
        prices=[price("comfyui", "sdxl", 0, catalog_pb2.PRICE_UNIT_FREE)],
    )
    try:
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="comfy-router", prompt="x", model="sdxl", width=512, height=512
            ),
            metadata=PRO,
            timeout=15,
        )
        assert (resp.provider, resp.provider_model, resp.cost_micros) == ("comfyui", "sdxl", 0)
        assert len(resp.images) == 1 and not resp.local_substitute
        fractions = [
            event.progress.fraction
            async for event in s.stub.StreamGenerateImage(
                router_pb2.StreamGenerateImageRequest(
                    request=router_pb2.GenerateImageRequest(
                        prompt="x", model="sdxl", width=512, height=512, steps=3
                    )
                ),
                metadata=PRO,
                timeout=15,
            )
            if event.HasField("progress") and event.progress.state == "SAMPLING"
        ]
        assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])
    finally:
        await s.stop()
        await emulator.stop()
