"""Request builders and one-call closures for each path the bench drives."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import grpc

from bench.echo import METHOD
from bench.loadgen import Call
from imagegate.common.v1 import image_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import transport_from_env
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc

OVERHEAD_HEADER = "x-imagegate-overhead-ms"
LOCAL_MODEL = "imagegate-local-v1"
PROMPT = "isometric treasure chest, game asset"


def provider_request(
    n: int, *, model: str = LOCAL_MODEL, side: int = 64
) -> provider_pb2.GenerateImageRequest:
    """A ProviderService GenerateImageRequest for one tiny PNG."""
    return provider_pb2.GenerateImageRequest(
        request_id=f"bench-{uuid.uuid4().hex}-{n}",
        model=model,
        prompt=PROMPT,
        width=side,
        height=side,
        num_images=1,
        seed=n,
        output_format=image_pb2.IMAGE_FORMAT_PNG,
    )


def router_request(
    n: int, *, model: str = "local", side: int = 64, providers: tuple[str, ...] = ()
) -> router_pb2.GenerateImageRequest:
    """A Router GenerateImageRequest for one tiny PNG with a fresh request_id."""
    return router_pb2.GenerateImageRequest(
        request_id=f"bench-{uuid.uuid4().hex}-{n}",
        prompt=PROMPT,
        width=side,
        height=side,
        num_images=1,
        seed=n,
        output_format=image_pb2.IMAGE_FORMAT_PNG,
        model=model,
        allowed_providers=list(providers),
    )


def channels(target: str, count: int) -> list[grpc.aio.Channel]:
    """`count` channels to one target; distinct args so each gets its own HTTP/2 connection."""
    return [
        grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("bench.channel_index", i),
            ],
        )
        for i in range(count)
    ]


def direct_call(
    chans: list[grpc.aio.Channel],
    *,
    side: int = 64,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> Call:
    """GenerateImage straight to an adapter (what the Router itself sends, service token too:
    the stack's `env` carries it)."""
    stubs = [provider_pb2_grpc.ProviderServiceStub(c) for c in chans]
    service = transport_from_env(env or {}).outbound_metadata()

    async def call(n: int) -> float | None:
        req = provider_request(n, side=side)
        resp = await stubs[n % len(stubs)].GenerateImage(req, timeout=timeout, metadata=service)
        if not resp.images:
            raise RuntimeError("no image")
        return None

    return call


def echo_call(chans: list[grpc.aio.Channel], payload: bytes, *, timeout: float = 30.0) -> Call:
    """The raw echo: the same request bytes out, a reply of the response's size back."""
    methods = [c.unary_unary(METHOD) for c in chans]

    async def call(n: int) -> float | None:
        await methods[n % len(methods)](payload, timeout=timeout)
        return None

    return call


def router_call(
    chans: list[grpc.aio.Channel],
    api_key: str,
    *,
    model: str = "local",
    side: int = 64,
    providers: tuple[str, ...] = (),
    timeout: float = 30.0,
    request_ids: bool = True,
) -> Call:
    """GenerateImage through the Router; returns its self-reported overhead in ms.

    Without `request_ids` the Router assigns ids, so no idempotency claim or stored result is on
    the request's path (the difference is what the shared claim costs).
    """
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in chans]
    auth = (("authorization", f"Bearer {api_key}"),)

    async def call(n: int) -> float | None:
        req = router_request(n, model=model, side=side, providers=providers)
        if not request_ids:
            req.request_id = ""
        rpc = stubs[n % len(stubs)].GenerateImage(
            req,
            metadata=auth,
            timeout=timeout,
        )
        resp = await rpc
        if not resp.images:
            raise RuntimeError("no image")
        for key, value in await rpc.trailing_metadata() or ():
            if key == OVERHEAD_HEADER:
                return float(value)
        return None

    return call


async def create_tenant(quota_addr: str, admin_token: str, name: str, plan: str) -> tuple[str, str]:
    """A fresh tenant on `plan` and an API key for it: (tenant_id, api_key)."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    async with create_channel(quota_addr) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant = await stub.CreateTenant(
            quota_pb2.CreateTenantRequest(
                request_id=f"bench-{uuid.uuid4().hex}", name=name, plan=plan
            ),
            metadata=admin,
            timeout=10,
        )
        key = await stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="bench"),
            metadata=admin,
            timeout=10,
        )
    return tenant.tenant.id, key.api_key
