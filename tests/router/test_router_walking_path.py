"""Walking path through the Router: key -> reserve -> local adapter -> settle, over real gRPC."""

from __future__ import annotations

import io

import grpc
import pytest
from PIL import Image

from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from tests.fixtures.router_stack import RouterStack, bearer, start_stack


@pytest.fixture
async def stack():
    s = await start_stack({"local": LocalAdapter(LocalSettings())})
    yield s
    await s.stop()


async def test_generate_through_local_backend_settles_once(stack: RouterStack) -> None:
    call = stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(
            request_id="walk-1", prompt="isometric treasure chest", width=512, height=512
        ),
        metadata=bearer("key-pro"),
        timeout=10,
    )
    resp = await call
    assert len(resp.images) == 1
    img = Image.open(io.BytesIO(resp.images[0].data))
    assert img.size == (512, 512) and img.format == "PNG"
    assert resp.provider == "local" and resp.provider_model == "imagegate-local-v1"
    assert resp.local_substitute and resp.notices
    assert [a.outcome for a in resp.attempts] == [router_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    assert len(resp.trace_id) == 32
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-imagegate-trace-id"] == resp.trace_id
    assert float(trailing["x-imagegate-overhead-ms"]) >= 0
    tenant = stack.quota.tenant("t_pro")
    assert tenant.used_images == 1 and tenant.reserved_images == 0
    record = stack.metering.records[("t_pro", "walk-1")]
    assert record.images == 1 and record.provider == "local"


async def test_missing_and_bad_key_are_unauthenticated(stack: RouterStack) -> None:
    req = router_pb2.GenerateImageRequest(prompt="x")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.stub.GenerateImage(req, timeout=5)
    parsed = parse_rpc_error(missing.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED and parsed.reason == "API_KEY_MISSING"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.stub.GenerateImage(req, metadata=bearer("nope"), timeout=5)
    parsed = parse_rpc_error(bad.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED and parsed.reason == "API_KEY_INVALID"


async def test_bad_input_gets_field_violations_over_the_wire(stack: RouterStack) -> None:
    cases = [
        (router_pb2.GenerateImageRequest(prompt=""), "prompt", "INVALID_ARGUMENT"),
        (
            router_pb2.GenerateImageRequest(prompt="x", num_images=5),
            "num_images",
            "INVALID_ARGUMENT",
        ),
        (
            router_pb2.GenerateImageRequest(prompt="x", width=0, height=0),
            "width",
            "INVALID_ARGUMENT",
        ),
        (router_pb2.GenerateImageRequest(prompt="x", model="nope"), "model", "UNKNOWN_MODEL"),
        (router_pb2.GenerateImageRequest(prompt="x", style="nope"), "style", "UNKNOWN_STYLE"),
    ]
    for request, field, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(request, metadata=bearer("key-pro"), timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert parsed.reason == reason and parsed.domain == "imagegate.router"
        assert field in [v.field for v in parsed.field_violations]
    assert stack.quota.calls.get("ReserveQuota", 0) == 0, "invalid input reserves nothing"


async def test_styles_listed_and_applied(stack: RouterStack) -> None:
    styles = await stack.stub.ListStyles(router_pb2.ListStylesRequest(), metadata=bearer("key-pro"))
    names = [s.name for s in styles.styles]
    assert "game-sprite" in names and "storybook" in names
    sprite = next(s for s in styles.styles if s.name == "game-sprite")
    assert "{prompt}" in sprite.prompt_template and sprite.default_width == 512
    resp = await stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(prompt="slime monster", style="game-sprite"),
        metadata=bearer("key-pro"),
        timeout=10,
    )
    img = Image.open(io.BytesIO(resp.images[0].data))
    assert img.size == (512, 512)


async def test_models_say_local_substitute_when_no_hosted_provider(stack: RouterStack) -> None:
    models = await stack.stub.ListModels(
        router_pb2.ListModelsRequest(), metadata=bearer("key-free")
    )
    flux = next(m for m in models.models if m.alias == "flux-schnell")
    assert flux.local_substitute and list(flux.providers) == ["local"]
    resp = await stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(prompt="x", preference=router_pb2.PREFERENCE_QUALITY),
        metadata=bearer("key-free"),
        timeout=10,
    )
    assert resp.local_substitute and "local backend" in resp.notices[0]
    quota = await stack.stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=bearer("key-free"))
    assert quota.quota.tenant.id == "t_free" and quota.quota.used_images == 1
    usage = await stack.stub.GetUsageSummary(
        router_pb2.GetUsageSummaryRequest(), metadata=bearer("key-free")
    )
    assert usage.summary.tenant_id == "t_free" and usage.summary.requests == 1
    est = await stack.stub.EstimateCost(
        router_pb2.EstimateCostRequest(request=router_pb2.GenerateImageRequest(prompt="x")),
        metadata=bearer("key-free"),
    )
    assert est.candidates[0].provider == "local" and est.expected_cost_micros == 0
