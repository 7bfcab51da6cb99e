"""gRPC kit: rich errors reach the client, unexpected errors hide their traceback, limits hold."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import (
    FieldViolation,
    ImagegateError,
    QuotaViolation,
    invalid_argument,
    parse_rpc_error,
)
from imagegate.grpckit.server import start_server
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc


class _Servicer(provider_pb2_grpc.ProviderServiceServicer):
    """A ProviderService whose behaviour each test picks through the request's model field."""

    async def GenerateImage(self, request, context):
        if request.model == "bad":
            raise invalid_argument(
                [FieldViolation("prompt", "must not be empty")], domain="imagegate.test"
            )
        if request.model == "quota":
            raise ImagegateError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                reasons.QUOTA_EXCEEDED,
                "monthly images used up",
                quota_violations=[QuotaViolation("tenant:t1", "50 of 50 images used")],
                retry_after_seconds=12.5,
                metadata={"reset_time": "2026-12-01T00:00:00Z"},
            )
        if request.model == "boom":
            raise RuntimeError("secret internals at /srv/app.py line 42")
        payload = b"\x00" * (5 * 1024 * 1024)
        return provider_pb2.GenerateImageResponse(model=request.model, images=[{"data": payload}])


@pytest.fixture
async def server():
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[
            lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(_Servicer(), s)
        ],
        service_names=["imagegate.provider.v1.ProviderService"],
        domain="imagegate.test",
    )
    yield running
    await running.stop(0)


async def _call(server, model: str):
    async with create_channel(server.address) as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        return await stub.GenerateImage(provider_pb2.GenerateImageRequest(model=model), timeout=5)


async def test_bad_request_carries_error_info_and_field_violations(server):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(server, "bad")
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.reason == reasons.INVALID_ARGUMENT
    assert parsed.domain == "imagegate.test"
    assert parsed.field_violations == [FieldViolation("prompt", "must not be empty")]


async def test_quota_failure_carries_quota_and_retry_details(server):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(server, "quota")
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert parsed.reason == reasons.QUOTA_EXCEEDED
    assert parsed.quota_violations == [QuotaViolation("tenant:t1", "50 of 50 images used")]
    assert parsed.retry_after_seconds == pytest.approx(12.5)
    assert parsed.metadata["reset_time"] == "2026-12-01T00:00:00Z"


async def test_unexpected_error_is_internal_without_traceback(server, caplog):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(server, "boom")
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INTERNAL
    assert parsed.reason == reasons.INTERNAL
    assert "secret internals" not in parsed.message
    assert "Traceback" not in parsed.message
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


async def test_five_mib_response_passes_with_raised_limits(server):
    resp = await _call(server, "big")
    assert len(resp.images[0].data) == 5 * 1024 * 1024


async def test_default_channel_limit_would_reject_the_same_response(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = provider_pb2_grpc.ProviderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(provider_pb2.GenerateImageRequest(model="big"), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_second_server_on_same_port_fails_loudly(server):
    with pytest.raises(RuntimeError):
        await start_server(
            address=server.address,
            registrars=[],
            service_names=[],
            domain="imagegate.test",
        )


async def test_health_serving_then_not_serving_on_stop():
    running = await start_server(
        address="127.0.0.1:0", registrars=[], service_names=["x.Y"], domain="imagegate.test"
    )
    async with create_channel(running.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service="x.Y"), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        await running.health.enter_graceful_shutdown()
        resp = await stub.Check(health_pb2.HealthCheckRequest(service="x.Y"), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await running.stop(0)


async def test_each_rpc_sees_its_own_arrival_marked_before_its_handler_ran() -> None:
    import asyncio
    import time

    from imagegate.grpckit.arrival import arrived
    from imagegate.telemetry import setup_telemetry

    seen: list[tuple[float, float]] = []

    class Probe(provider_pb2_grpc.ProviderServiceServicer):
        async def DescribeProvider(self, request, context):
            seen.append((arrived(-1.0), time.perf_counter()))
            await asyncio.sleep(0.01)
            return provider_pb2.DescribeProviderResponse(provider="probe")

    telemetry = setup_telemetry("arrival")
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(Probe(), s)],
        service_names=[],
        domain="test.arrival",
        interceptors=telemetry.server_interceptors(),
    )
    try:
        async with create_channel(running.address) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            await asyncio.gather(
                *(stub.DescribeProvider(provider_pb2.DescribeProviderRequest()) for _ in range(8))
            )
    finally:
        await running.stop(0)
        telemetry.shutdown()
    assert len(seen) == 8
    assert all(0 < marked <= handler for marked, handler in seen)
    assert len({marked for marked, _ in seen}) == 8  # one mark per RPC, none shared
