"""Under failure the Router tells the truth: no placeholder as success, real waits, real costs."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.router.v1 import router_pb2
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import ADMIN, bearer, start_stack

HF_SD21 = "stabilityai/stable-diffusion-2-1"
FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"
PRO, FREE = bearer("key-pro"), bearer("key-free")
UNAVAILABLE = ProviderError(reasons.PROVIDER_UNAVAILABLE, "503 from the provider")


async def failure(stub: object, metadata: object, **fields: object) -> ParsedStatus:
    fields.setdefault("width", 256)
    fields.setdefault("height", 256)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateImage(  # type: ignore[attr-defined]
            router_pb2.GenerateImageRequest(prompt="fox", **fields), metadata=metadata, timeout=10
        )
    return parse_rpc_error(info.value)


async def test_local_placeholder_is_never_a_fallback_for_hosted_models() -> None:
    hf = ControllableAdapter("huggingface", [spec(HF_SD21)], default=UNAVAILABLE)
    fal_models = [spec(FAL), spec("fal-ai/flux-pro/v1.1"), spec("fal-ai/flux/dev")]
    fal = ControllableAdapter("fal", fal_models, default=UNAVAILABLE)
    local = LocalAdapter(LocalSettings())
    s = await start_stack({"huggingface": hf, "fal": fal, "local": local})
    try:
        # A free tenant's default preference falls back to its plan's (budget) models only.
        free = await failure(s.stub, FREE)
        assert free.code == grpc.StatusCode.UNAVAILABLE
        providers = {a["p"] for a in json.loads(free.metadata["attempts"])}
        assert providers == {"huggingface"}, providers
        # A pro tenant asking for quality, every hosted provider down: an error, not shapes.
        pro = await failure(s.stub, PRO, preference=router_pb2.PREFERENCE_QUALITY)
        assert pro.code == grpc.StatusCode.UNAVAILABLE
        tried = {a["p"] for a in json.loads(pro.metadata["attempts"])}
        assert "local" not in tried and "fal" in tried
        # Asking for the local model by name still works.
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(prompt="fox", model="local", width=64, height=64),
            metadata=PRO,
        )
        assert resp.provider == "local" and len(resp.images) == 1
    finally:
        await s.stop()


async def test_caller_is_told_the_providers_retry_after_not_a_shorter_wait() -> None:
    limited = ProviderError(
        reasons.PROVIDER_RATE_LIMITED, "429", http_status=429, retry_after_seconds=7
    )
    fal = ControllableAdapter("fal", [spec(FAL)], default=limited)
    s = await start_stack({"fal": fal})
    try:
        err = await failure(s.stub, PRO, model="flux-schnell")
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert err.reason == reasons.PROVIDER_RATE_LIMITED
        assert err.retry_after_seconds is not None and 6.5 <= err.retry_after_seconds <= 7.0
    finally:
        await s.stop()


async def test_retry_info_covers_the_routers_own_open_breaker() -> None:
    limited = ProviderError(
        reasons.PROVIDER_RATE_LIMITED, "429", http_status=429, retry_after_seconds=2
    )
    fal = ControllableAdapter("fal", [spec(FAL)], default=limited)
    rep = ControllableAdapter("replicate", [spec(REP)], default=limited)
    s = await start_stack({"fal": fal, "replicate": rep})
    try:
        err = await failure(s.stub, PRO, model="flux-schnell")
        assert err.retry_after_seconds is not None and err.retry_after_seconds >= 1.9
        # Obeying it, the caller finds a candidate again (no NO_CANDIDATE).
        fal.default = rep.default = ("sleep", 0.0)
        await asyncio.sleep(err.retry_after_seconds)
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="fox", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
        )
        assert resp.provider in {"fal", "replicate"}
    finally:
        await s.stop()


@pytest.mark.parametrize("reason", [reasons.PROVIDER_OUT_OF_CREDITS, reasons.PROVIDER_AUTH_FAILED])
async def test_provider_account_failures_everywhere_are_failed_precondition(reason: str) -> None:
    broke = ProviderError(reason, "402 insufficient credit", http_status=402)
    fal = ControllableAdapter("fal", [spec(FAL)], default=broke)
    rep = ControllableAdapter("replicate", [spec(REP)], default=broke)
    s = await start_stack({"fal": fal, "replicate": rep})
    try:
        err = await failure(s.stub, PRO, model="flux-schnell")
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.reason == reason
        assert err.retry_after_seconds is None
        assert "operator" in err.message
    finally:
        await s.stop()


async def test_a_billed_failure_shows_its_cost_in_the_error_and_trailer() -> None:
    moderated = ProviderError(reasons.PROVIDER_CONTENT_MODERATED, "output flagged", billable=True)
    fal = ControllableAdapter("fal", [spec(FAL)], default=moderated)
    s = await start_stack({"fal": fal}, prices=[price("fal", FAL, 3000)])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    prompt="fox", model="flux-schnell", width=256, height=256
                ),
                metadata=PRO,
            )
        err = parse_rpc_error(info.value)
        assert err.reason == reasons.PROVIDER_CONTENT_MODERATED
        assert err.metadata[reasons.META_COST_MICROS] == "3000"
        assert "3000 micro-USD" in err.message
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers["x-imagegate-cost-micros"] == "3000"
    finally:
        await s.stop()


@pytest.mark.parametrize("deadline", [0.3, 0.1])
async def test_a_short_deadline_on_a_fast_backend_is_served(deadline: float) -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.02))
    s = await start_stack({"fal": fal})
    try:
        warm = router_pb2.GenerateImageRequest(
            prompt="w", model="flux-schnell", width=64, height=64
        )
        await s.stub.GenerateImage(warm, metadata=PRO)
        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="fox", model="flux-schnell", width=64, height=64
            ),
            metadata=PRO,
            timeout=deadline,
        )
        assert resp.provider == "fal"
    finally:
        await s.stop()


async def test_an_open_breaker_shows_the_failures_that_opened_it() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=UNAVAILABLE)
    s = await start_stack({"fal": fal}, breaker_consecutive_failures=2)
    try:
        for _ in range(2):
            await failure(s.stub, PRO, model="flux-schnell")
        status = await s.stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=ADMIN
        )
        row = next(p for p in status.providers if p.provider == "fal" and p.provider_model == FAL)
        assert row.state == router_pb2.BREAKER_STATE_OPEN
        assert row.window_calls == 2 and row.error_rate == 1.0
    finally:
        await s.stop()


async def test_stream_says_when_a_candidate_is_skipped_for_an_open_breaker() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=UNAVAILABLE)
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack({"fal": fal, "replicate": rep}, breaker_consecutive_failures=1)
    try:
        request = router_pb2.GenerateImageRequest(
            prompt="fox", model="flux-schnell", width=64, height=64
        )
        await s.stub.GenerateImage(request, metadata=PRO)  # fal fails, its breaker opens
        events = [
            e
            async for e in s.stub.StreamGenerateImage(
                router_pb2.StreamGenerateImageRequest(request=request), metadata=PRO
            )
        ]
        skipped = [e.skipped for e in events if e.WhichOneof("event") == "skipped"]
        assert [(k.provider, k.kind) for k in skipped] == [("fal", "breaker")]
        assert skipped[0].HasField("retry_at") and "circuit open" in skipped[0].detail
        assert events[-1].result.provider == "replicate"
    finally:
        await s.stop()
