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
from services.router.testing import RouterStack, bearer, start_stack


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
