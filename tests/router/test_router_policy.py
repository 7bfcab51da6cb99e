"""Routing policy details: degradation, budget ordering, provider lists, refresh, status, streams."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import ModelSpec, PriceUnit, SizeRule
from imagegate.router.v1 import router_pb2
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from tests.fixtures.adapters import HANG, ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import ADMIN, bearer, start_stack

FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"
PRO = bearer("key-pro")


def no_seed(model_id: str) -> ModelSpec:
    return ModelSpec(
        id=model_id,
        sizes=SizeRule(min_side=64, max_side=2048),
        seed=False,
        price_unit=PriceUnit.IMAGE,
    )


async def test_capability_gap_skips_unless_degradation_is_allowed() -> None:
    fal = ControllableAdapter("fal", [no_seed(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack({"fal": fal, "replicate": rep})
    try:
        base = {"prompt": "fox", "model": "flux-schnell", "width": 256, "height": 256, "seed": 7}
        resp = await s.stub.GenerateImage(router_pb2.GenerateImageRequest(**base), metadata=PRO)
        assert resp.provider == "replicate" and fal.calls == []
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(**base, allow_degradation=True), metadata=PRO
        )
        assert resp.provider == "fal"
        assert [d.field for d in resp.deviations] == ["seed"]
        est = await s.stub.EstimateCost(
            router_pb2.EstimateCostRequest(request=router_pb2.GenerateImageRequest(**base)),
            metadata=PRO,
        )
        skipped = {c.provider: c.skip_reason for c in est.candidates}
        assert "seed" in skipped["fal"] and skipped["replicate"] == ""
    finally:
        await s.stop()


async def test_too_many_images_is_never_degraded() -> None:
    fal = ControllableAdapter("fal", [spec(FAL, max_images=1)])
    s = await start_stack({"fal": fal})
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    prompt="fox",
                    model="flux-schnell",
                    num_images=3,
                    allow_degradation=True,
                    width=256,
                    height=256,
                ),
                metadata=PRO,
            )
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.FAILED_PRECONDITION
        assert parsed.reason == reasons.NO_CANDIDATE and "at most 1 images" in parsed.message
        assert s.quota.calls.get("ReserveQuota", 0) == 0
    finally:
        await s.stop()


async def test_budget_preference_orders_by_quoted_price_and_provider_lists_apply() -> None:
    fal = ControllableAdapter("fal", [spec(FAL), spec("fal-ai/fast-sdxl")])
    rep = ControllableAdapter("replicate", [spec(REP), spec("stability-ai/sdxl")])
    s = await start_stack(
        {"fal": fal, "replicate": rep},
        prices=[
            price("fal", FAL, 3000),
            price("replicate", REP, 3000),
            price("fal", "fal-ai/fast-sdxl", 2500),
            price("replicate", "stability-ai/sdxl", 900),
        ],
    )
    try:
        est = await s.stub.EstimateCost(
            router_pb2.EstimateCostRequest(
                request=router_pb2.GenerateImageRequest(
                    prompt="x", preference=router_pb2.PREFERENCE_BUDGET, width=512, height=512
                )
            ),
            metadata=PRO,
        )
        eligible = [(c.provider_model, c.cost_micros) for c in est.candidates if not c.skip_reason]
        assert eligible[0] == ("stability-ai/sdxl", 900)
        assert [c for _, c in eligible] == sorted(c for _, c in eligible)
        assert est.expected_cost_micros == 900
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="x",
                preference=router_pb2.PREFERENCE_BUDGET,
                width=512,
                height=512,
                blocked_providers=["replicate"],
            ),
            metadata=PRO,
        )
        assert resp.provider == "fal" and resp.provider_model == "fal-ai/fast-sdxl"
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="x",
                model="flux-schnell",
                width=512,
                height=512,
                allowed_providers=["replicate"],
            ),
            metadata=PRO,
        )
        assert resp.provider == "replicate"
    finally:
        await s.stop()


async def test_disabled_adapter_is_not_a_candidate_until_refresh_says_so() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], enabled=False)
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack({"fal": fal, "replicate": rep})
    try:
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="x", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
        )
        assert resp.provider == "replicate" and fal.calls == []
        fal.enabled = True
        await s.app.adapters.refresh()
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="x", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
        )
        assert resp.provider == "fal"
        fal.enabled = False
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="y", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
        )
        assert resp.provider == "replicate"
        assert resp.attempts[0].error_reason == reasons.PROVIDER_DISABLED
        assert s.app.adapters.get("fal").enabled is False
    finally:
        await s.stop()


async def test_provider_status_reports_in_flight_and_latency() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        for i in range(3):
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=f"l{i}", prompt="x", model="flux-schnell", width=256, height=256
                ),
                metadata=PRO,
            )
        fal.default = HANG
        call = s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="x", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
            timeout=30,
        )
        for _ in range(100):
            if len(fal.calls) == 4:
                break
            await asyncio.sleep(0.02)
        status = await s.stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=ADMIN
        )
        model = next(p for p in status.providers if p.provider_model == FAL)
        provider = next(p for p in status.providers if p.provider == "fal" and not p.provider_model)
        assert model.in_flight == 1 and provider.in_flight == 1 and model.enabled
        assert model.window_calls == 3 and model.error_rate == 0
        assert model.latency_p50.ToNanoseconds() > 0
        assert model.state == router_pb2.BREAKER_STATE_CLOSED
        call.cancel()
    finally:
        await s.stop()


async def test_stream_replay_of_a_finished_request() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        r = router_pb2.GenerateImageRequest(
            request_id="sr", prompt="x", model="flux-schnell", width=256, height=256
        )
        first = await s.stub.GenerateImage(r, metadata=PRO)
        events = [
            e
            async for e in s.stub.StreamGenerateImage(
                router_pb2.StreamGenerateImageRequest(request=r), metadata=PRO
            )
        ]
        assert [e.WhichOneof("event") for e in events] == ["accepted", "result"]
        assert events[-1].result.images[0].data == first.images[0].data
        assert len(fal.calls) == 1
    finally:
        await s.stop()


async def test_free_tenant_is_refused_a_pro_alias_even_when_local_stands_in() -> None:
    s = await start_stack({"local": LocalAdapter(LocalSettings())})
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    prompt="x", model="flux-pro", width=128, height=128
                ),
                metadata=bearer("key-free"),
            )
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
        assert parsed.reason == reasons.PLAN_FORBIDS_MODEL
        assert parsed.metadata["model"] == "flux-pro" and parsed.metadata["plan"] == "free"
        # Without a model the local stand-in still serves the free tenant (it counts as budget).
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(prompt="x", width=128, height=128),
            metadata=bearer("key-free"),
        )
        assert resp.local_substitute and resp.provider == "local"
        models = await s.stub.ListModels(
            router_pb2.ListModelsRequest(), metadata=bearer("key-free")
        )
        allowed = {m.alias: m.allowed_by_plan for m in models.models}
        assert allowed["flux-pro"] is False
        assert any(allowed.values())
    finally:
        await s.stop()


async def test_plan_gating_of_an_alias_is_the_same_with_and_without_provider_keys() -> None:
    keyless = await start_stack({"local": LocalAdapter(LocalSettings())})
    fal = ControllableAdapter("fal", [spec(FAL), spec("fal-ai/flux/dev")])
    keyed = await start_stack({"local": LocalAdapter(LocalSettings()), "fal": fal})
    try:
        for stack in (keyless, keyed):
            models = await stack.stub.ListModels(
                router_pb2.ListModelsRequest(), metadata=bearer("key-free")
            )
            # The aliases someone serves in both stacks (the keyed one has fal only).
            for m in [m for m in models.models if m.alias in ("flux-schnell", "flux-dev")]:
                request = router_pb2.GenerateImageRequest(
                    prompt="x", model=m.alias, width=256, height=256
                )
                refused = False
                try:
                    await stack.stub.GenerateImage(request, metadata=bearer("key-free"))
                except grpc.aio.AioRpcError as err:
                    refused = parse_rpc_error(err).reason == reasons.PLAN_FORBIDS_MODEL
                assert refused == (not m.allowed_by_plan), (m.alias, m.allowed_by_plan)
        flux_dev = [
            {m.alias: m.allowed_by_plan for m in r.models}["flux-dev"]
            for r in [
                await st.stub.ListModels(
                    router_pb2.ListModelsRequest(), metadata=bearer("key-free")
                )
                for st in (keyless, keyed)
            ]
        ]
        assert flux_dev == [False, False]
    finally:
        await keyless.stop()
        await keyed.stop()


async def test_rate_limited_without_retry_after_counts_as_failure() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack({"fal": fal, "replicate": rep}, breaker_consecutive_failures=2)
    try:
        fal.default = ProviderError(reasons.PROVIDER_RATE_LIMITED, "429", http_status=429)
        for i in range(2):
            resp = await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=f"rl{i}", prompt="x", model="flux-schnell", width=256, height=256
                ),
                metadata=PRO,
            )
            assert resp.provider == "replicate"
        assert s.app.breakers.get("fal").state.value == "open"
    finally:
        await s.stop()


async def test_only_candidate_backing_off_is_unavailable_with_retry_info() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        fal.then(ProviderError(reasons.PROVIDER_RATE_LIMITED, "429", retry_after_seconds=30))
        r = router_pb2.GenerateImageRequest(prompt="x", model="flux-schnell", width=256, height=256)
        with pytest.raises(grpc.aio.AioRpcError):
            await s.stub.GenerateImage(r, metadata=PRO)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(r, metadata=PRO)
        parsed = parse_rpc_error(info.value)
        # Other flux-schnell providers are simply not configured; the reason is the back-off.
        assert parsed.code == grpc.StatusCode.UNAVAILABLE and parsed.reason == reasons.NO_CANDIDATE
        assert parsed.retry_after_seconds is not None and 29 <= parsed.retry_after_seconds <= 30
        assert len(fal.calls) == 1
    finally:
        await s.stop()


async def test_free_tenant_default_preference_falls_back_to_budget_models() -> None:
    rep = ControllableAdapter("replicate", [spec(REP), spec("stability-ai/sdxl")])
    hf = ControllableAdapter("huggingface", [spec("stabilityai/stable-diffusion-2-1")])
    s = await start_stack({"replicate": rep, "huggingface": hf})
    try:
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(prompt="x", width=512, height=512),
            metadata=bearer("key-free"),
        )
        assert resp.model == "sd-2.1" and resp.provider == "huggingface"
        assert any("plan free" in n for n in resp.notices)
        assert rep.calls == []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(prompt="x", model="sdxl", width=512, height=512),
                metadata=bearer("key-free"),
            )
        assert parse_rpc_error(info.value).reason == reasons.PLAN_FORBIDS_MODEL
    finally:
        await s.stop()
