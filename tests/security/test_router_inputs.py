"""The Router's request_id charset and its tenant view of provider status."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2
from services.router.validation import MAX_REQUEST_ID
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.router_stack import ADMIN, RouterStack, bearer, start_stack

PRO = bearer("key-pro")
FAL = "fal-ai/flux/schnell"


@pytest.fixture
async def stack():
    s = await start_stack({"fal": ControllableAdapter("fal", [spec(FAL)])})
    yield s
    await s.stop()


@pytest.mark.parametrize(
    "request_id",
    [
        "with\nnewline",
        "nul\x00byte",
        "tab\tchar",
        "comma,separated",
        "space inside",
        'quote"d',
        "slash/path",
        "ünïcode",
        "x" * (MAX_REQUEST_ID + 1),
    ],
)
async def test_request_id_outside_the_charset_is_invalid_argument_with_a_field_violation(
    stack: RouterStack, request_id: str
):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerateImage(
            router_pb2.GenerateImageRequest(request_id=request_id, prompt="fox"), metadata=PRO
        )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.reason == reasons.INVALID_ARGUMENT
    assert "request_id" in [v.field for v in parsed.field_violations]
    # Nothing was reserved for a refused request.
    assert stack.quota.reservations == {}


@pytest.mark.parametrize(
    "request_id", ["0b7c4a1e-9f0e-4c55-b1f5-3f2e7c9d8a10", "01HZX3V5Q2.job:7_a-b", "x" * 128]
)
async def test_uuids_ulids_and_dotted_ids_are_accepted(stack: RouterStack, request_id: str):
    resp = await stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(
            request_id=request_id, prompt="fox", model="flux-schnell", width=256, height=256
        ),
        metadata=PRO,
    )
    assert resp.request_id == request_id


async def test_get_generation_checks_the_request_id_charset(stack: RouterStack):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GetGeneration(
            router_pb2.GetGenerationRequest(request_id="bad\nid"), metadata=PRO
        )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["request_id"]


async def test_tenants_see_provider_state_but_not_operator_detail(stack: RouterStack):
    await stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(prompt="fox", model="flux-schnell", width=256, height=256),
        metadata=PRO,
    )
    tenant = await stack.stub.GetProviderStatus(router_pb2.GetProviderStatusRequest(), metadata=PRO)
    admin = await stack.stub.GetProviderStatus(
        router_pb2.GetProviderStatusRequest(), metadata=ADMIN
    )
    assert admin.replica_id and not tenant.replica_id
    by_key = {(p.provider, p.provider_model): p for p in admin.providers}
    assert any(p.window_calls > 0 for p in admin.providers)
    assert {(p.provider, p.provider_model) for p in tenant.providers} == set(by_key)
    for row in tenant.providers:
        assert row.state == by_key[(row.provider, row.provider_model)].state
        assert row.enabled == by_key[(row.provider, row.provider_model)].enabled
        assert row.window_calls == 0 and row.error_rate == 0 and row.in_flight == 0
        assert row.trips == 0 and row.last_error_reason == ""
        assert not row.HasField("latency_p50") and not row.HasField("latency_p95")


async def test_provider_status_without_credentials_is_unauthenticated(stack: RouterStack):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GetProviderStatus(router_pb2.GetProviderStatusRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=bearer("not-the-admin-token")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_tenant_sees_only_the_providers_its_plan_may_route_to(stack: RouterStack):
    await stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(prompt="fox", model="flux-schnell", width=256, height=256),
        metadata=PRO,
    )
    admin = await stack.stub.GetProviderStatus(
        router_pb2.GetProviderStatusRequest(), metadata=ADMIN
    )
    pro = await stack.stub.GetProviderStatus(router_pb2.GetProviderStatusRequest(), metadata=PRO)
    free = await stack.stub.GetProviderStatus(
        router_pb2.GetProviderStatusRequest(), metadata=bearer("key-free")
    )
    rows = lambda resp: {(p.provider, p.provider_model) for p in resp.providers}  # noqa: E731
    assert ("fal", FAL) in rows(admin) and ("fal", FAL) in rows(pro)
    # The free plan routes to budget models only: fal's fast model does not affect it.
    assert not {r for r in rows(free) if r[0] == "fal"}
    assert rows(free) <= rows(admin)
