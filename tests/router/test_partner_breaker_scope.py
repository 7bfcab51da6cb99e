"""A rate limit on one HF partner route holds back that route only, not the other partners."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import GenerationRequest
from imagegate.router.v1 import router_pb2
from services.huggingface import wire
from tests.fixtures.adapters import OK, ControllableAdapter, spec
from tests.fixtures.router_stack import bearer, start_stack

PRO = bearer("key-pro")
FAL_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.FAL)
NSCALE_ROUTE = wire.partner_route(wire.FLUX_SCHNELL, wire.NSCALE)


def _fal_rate_limited(scope: dict[str, str]):
    def act(request: GenerationRequest):
        if request.model == FAL_ROUTE:
            return ProviderError(
                reasons.PROVIDER_RATE_LIMITED, "429", retry_after_seconds=30, extra=dict(scope)
            )
        return OK

    return act


async def _two_requests(scope: dict[str, str]) -> tuple[ControllableAdapter, object, list[str]]:
    hf = ControllableAdapter(
        "huggingface", [spec(FAL_ROUTE), spec(NSCALE_ROUTE)], default=_fal_rate_limited(scope)
    )
    s = await start_stack({"huggingface": hf})
    served = []
    try:
        for i in range(2):
            resp = await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=f"p{i}", prompt="x", model="flux-schnell", width=256, height=256
                ),
                metadata=PRO,
            )
            served.append(resp.provider_model)
        return hf, s.app.breakers, served
    finally:
        await s.stop()


async def test_a_partner_rate_limit_backs_off_that_route_and_keeps_the_others() -> None:
    hf, breakers, served = await _two_requests({reasons.META_BREAKER_SCOPE: "model"})
    assert served == [NSCALE_ROUTE, NSCALE_ROUTE]
    # The second request did not knock on the rate-limited route again.
    assert [c.model for c in hf.calls] == [FAL_ROUTE, NSCALE_ROUTE, NSCALE_ROUTE]
    assert breakers.get("huggingface").retry_at is None
    assert breakers.get("huggingface", FAL_ROUTE).retry_at is not None
    assert breakers.get("huggingface", NSCALE_ROUTE).retry_at is None


async def test_without_the_scope_a_rate_limit_holds_back_every_route_of_the_provider() -> None:
    hf = ControllableAdapter(
        "huggingface", [spec(FAL_ROUTE), spec(NSCALE_ROUTE)], default=_fal_rate_limited({})
    )
    s = await start_stack({"huggingface": hf})
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    prompt="x", model="flux-schnell", width=256, height=256
                ),
                metadata=PRO,
            )
        assert parse_rpc_error(info.value).code == grpc.StatusCode.UNAVAILABLE
        assert [c.model for c in hf.calls] == [FAL_ROUTE]
        assert s.app.breakers.get("huggingface").retry_at is not None
    finally:
        await s.stop()
