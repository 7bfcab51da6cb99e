"""Requests refused by planning (plan tier, cost ceiling, no candidate) never reach Quota."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
FAL_PRO = "fal-ai/flux-pro/v1.1"


async def refused(stub: object, metadata: object, **fields: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GenerateImage(  # type: ignore[attr-defined]
            router_pb2.GenerateImageRequest(prompt="fox", width=256, height=256, **fields),
            metadata=metadata,
        )
    return info.value


async def test_refused_requests_make_no_quota_reservation_and_served_ones_make_one() -> None:
    fal = ControllableAdapter("fal", [spec(FAL), spec(FAL_PRO)])
    s = await start_stack(
        {"fal": fal}, prices=[price("fal", FAL, 3000), price("fal", FAL_PRO, 40000)]
    )
    try:
        err = await refused(s.stub, bearer("key-pro"), model="flux-schnell", max_cost_micros=10)
        assert parse_rpc_error(err).reason == reasons.COST_CEILING_UNMET
        err = await refused(s.stub, bearer("key-free"), model="flux-pro")
        assert parse_rpc_error(err).reason == reasons.PLAN_FORBIDS_MODEL
        err = await refused(
            s.stub, bearer("key-pro"), model="flux-schnell", blocked_providers=["fal"]
        )
        assert parse_rpc_error(err).reason == reasons.NO_CANDIDATE
        assert s.quota.calls.get("ReserveQuota", 0) == 0
        assert fal.calls == []

        resp = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                prompt="fox", model="flux-schnell", width=256, height=256
            ),
            metadata=bearer("key-pro"),
        )
        assert resp.provider == "fal"
        assert s.quota.calls["ReserveQuota"] == 1
    finally:
        await s.stop()


async def test_a_bad_key_is_refused_before_planning_and_reserves_nothing() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal}, prices=[price("fal", FAL, 3000)])
    try:
        err = await refused(s.stub, bearer("nope"), model="flux-schnell")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert s.quota.calls.get("ReserveQuota", 0) == 0
    finally:
        await s.stop()
