"""Internal RPCs only for services: a client-certificate identity or the service token, never a tenant key."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError

# Metadata the Router's channels send when TLS is off; never the `authorization` header, which
# carries tenant keys and the admin token.
SERVICE_TOKEN_HEADER = "x-imagegate-service-token"


def service_methods(service: str, names: Iterable[str]) -> frozenset[str]:
    """Full method paths ("/pkg.Service/Rpc") of `names` in `service`."""
    return frozenset(f"/{service}/{name}" for name in names)


class ServiceGuard:
    """Decides whether a call comes from one of our services.

    Accepted: a client certificate (verified against our CA by the TLS layer) whose common name
    is in `peers`, or the service token in SERVICE_TOKEN_HEADER (compared in constant time
    against bytes computed once). Anything else, a tenant's `authorization` header included,
    is refused.
    """

    def __init__(
        self, *, token: str, peers: Iterable[str], methods: frozenset[str], domain: str
    ) -> None:
        self._token = token.encode() if token else b""
        self._peers = frozenset(p.encode() for p in peers)
        self.methods = methods
        self._domain = domain

    def check(self, context: grpc.aio.ServicerContext) -> None:
        """Returns when the caller is a service; raises UNAUTHENTICATED / PERMISSION_DENIED."""
        presented: str | bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key == SERVICE_TOKEN_HEADER:
                presented = value
                break
        if presented is not None:
            raw = presented.encode() if isinstance(presented, str) else presented
            if self._token and hmac.compare_digest(raw, self._token):
                return
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.SERVICE_TOKEN_INVALID,
                "the service token does not match",
                domain=self._domain,
            )
        names = (context.auth_context() or {}).get("x509_common_name") or ()
        if names:
            if any(name in self._peers for name in names):
                return
            raise ImagegateError(
                grpc.StatusCode.PERMISSION_DENIED,
                reasons.SERVICE_NOT_ALLOWED,
                "this RPC is for internal services; your certificate's identity may not call it",
                domain=self._domain,
                metadata={"identity": names[0].decode(errors="replace")[:64]},
            )
        raise ImagegateError(
            grpc.StatusCode.UNAUTHENTICATED,
            reasons.SERVICE_IDENTITY_REQUIRED,
            "this RPC is for internal services: present a service certificate or service token",
            domain=self._domain,
        )


class ServiceGuardInterceptor(grpc.aio.ServerInterceptor):
    """Runs the guard before every guarded method; innermost, so ErrorInterceptor maps refusals."""

    def __init__(self, guard: ServiceGuard) -> None:
        self._guard = guard
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method not in self._guard.methods:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        check = self._guard.check
        wrapped = handler
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check(context)
                return await behavior(request, context)

            wrapped = grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check(context)
                async for item in stream_behavior(request, context):
                    yield item

            wrapped = grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class MetadataStub:
    """A generated stub whose every call also sends `metadata` (the service token).

    One tuple concatenation per call; methods are bound once and cached on the instance.
    """

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not callable(method):
            return method
        extra = self._metadata

        def call(request: Any, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
            return method(request, *args, metadata=extra + tuple(metadata or ()), **kwargs)

        setattr(self, name, call)
        return call


def with_metadata(stub: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    """`stub` sending `metadata` on every call; `stub` itself when there is none."""
    return MetadataStub(stub, metadata) if metadata else stub
