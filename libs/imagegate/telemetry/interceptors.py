"""gRPC server interceptor: one SERVER span and one duration sample per RPC, health untraced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

# Probes and tooling: tracing them would bury real traffic (and cost a span each).
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

# Server-side gRPC codes that are the server's fault (OTel rpc semconv: span status ERROR).
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# Seconds: fine steps below 5 ms (Router overhead, quota calls) up to five-minute generations.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def is_untraced(method: str) -> bool:
    """Whether a full method name ("/pkg.Service/Method") belongs to a probe service."""
    service = method.lstrip("/").split("/", 1)[0]
    return service in UNTRACED_SERVICES


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _carrier(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not key.endswith("-bin"):
            out[key] = value.decode() if isinstance(value, bytes) else value
    return out


def _peer(context: grpc.aio.ServicerContext) -> dict[str, str | int]:
    peer = context.peer() or ""
    # "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555"
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = rest.rpartition(":")
    attrs: dict[str, str | int] = {"network.peer.address": host.strip("[]")}
    if port.isdigit():
        attrs["network.peer.port"] = int(port)
    return attrs


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Continues the caller's W3C trace (or starts one) and records `rpc.server.call.duration`.

    Written here rather than taken from opentelemetry-instrumentation-grpc because that one
    misses `abort_with_status`, which is how every imagegate error leaves a server: its spans
    would say status 0 for every failure.
    """

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self._tracer = tracer
        self._duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of inbound gRPC calls, by method and status code.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or is_untraced(method):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> tuple[Any, dict[str, Any]]:
        service, name = _split(method)
        attrs: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
        }
        parent = propagate.extract(_carrier(context))
        span = self._tracer.start_span(
            f"{service}/{name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**attrs, **_peer(context)},
            record_exception=False,
            set_status_on_exception=False,
        )
        return span, attrs

    def _finish(
        self,
        span: Any,
        attrs: dict[str, Any],
        context: grpc.aio.ServicerContext,
        started: float,
        error: BaseException | None,
    ) -> None:
        code = _final_code(context, error)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERROR_CODES:
            details = context.details() if hasattr(context, "details") else None
            span.set_status(Status(StatusCode.ERROR, _text(details) or code.name))
        if error is not None and not isinstance(error, grpc.aio.AbortError | GeneratorExit):
            span.record_exception(error)
        span.end()
        self._duration.record(
            time.perf_counter() - started, {**attrs, "rpc.grpc.status_code": code.value[0]}
        )

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            span, attrs = self._start(method, context)
            token = otel_context.attach(trace.set_span_in_context(span))
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as err:
                error = err
                raise
            finally:
                otel_context.detach(token)
                self._finish(span, attrs, context, started, error)

        return wrapper

    def _stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            span, attrs = self._start(method, context)
            error: BaseException | None = None
            try:
                # The generator may resume in another context, so attach around each step.
                iterator = behavior(request, context).__aiter__()
                while True:
                    token = otel_context.attach(trace.set_span_in_context(span))
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    yield item
            except BaseException as err:
                error = err
                raise
            finally:
                self._finish(span, attrs, context, started, error)

        return wrapper


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""


class _SemconvName:
    """Names client spans "pkg.Service/Method" like the server side (no leading slash)."""

    def _start_span(self, method: str, **kwargs: Any) -> Any:
        return super()._start_span(method.lstrip("/"), **kwargs)  # type: ignore[misc]


def client_interceptors(tracer: trace.Tracer) -> list[grpc.aio.ClientInterceptor]:
    """OTel's aio client interceptors (inject the current context), health checks skipped."""
    from opentelemetry.instrumentation.grpc import _aio_client
    from opentelemetry.instrumentation.grpc import filters as grpc_filters

    untraced = grpc_filters.negate(
        grpc_filters.any_of(*map(grpc_filters.service_name, UNTRACED_SERVICES))
    )
    bases = (
        _aio_client.UnaryUnaryAioClientInterceptor,
        _aio_client.UnaryStreamAioClientInterceptor,
        _aio_client.StreamUnaryAioClientInterceptor,
        _aio_client.StreamStreamAioClientInterceptor,
    )
    return [
        type(base.__name__, (_SemconvName, base), {})(tracer, filter_=untraced) for base in bases
    ]
