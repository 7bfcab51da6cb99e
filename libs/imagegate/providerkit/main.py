"""Runs one adapter as its own gRPC process: server, health, telemetry, graceful stop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from grpc_health.v1 import health_pb2

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.security import Transport, startup_transport
from imagegate.grpckit.server import RunningServer, serve_until_signal, start_server
from imagegate.inputs.checks import InputLimits
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.servicer import ProviderServicer
from imagegate.telemetry import Telemetry, metrics_address, setup_telemetry
from imagegate.telemetry.logs import configure_logging
from imagegate.telemetry.metrics import register_adapter_gauges

log = logging.getLogger(__name__)

SERVICE_NAME = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name


# Only services may call these: each spends provider credit. DescribeProvider stays open.
SERVICE_ONLY_RPCS = ("GenerateImage", "StreamGenerateImage")


async def start_adapter_server(
    adapter: Adapter,
    *,
    address: str,
    telemetry: Telemetry,
    input_limits: InputLimits | None = None,
    transport: Transport | None = None,
) -> tuple[RunningServer, ProviderServicer]:
    """Starts a ProviderService server for `adapter` on `address` (port 0 picks one).

    With a `transport` that has a service token or mTLS, generation RPCs admit only services.
    """
    domain = f"imagegate.provider.{adapter.name}"
    guarded = transport is not None and transport.has_service_identity
    servicer = ProviderServicer(adapter, input_limits)
    running = await start_server(
        address=address,
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        domain=domain,
        interceptors=telemetry.server_interceptors(),
        transport=transport,
        guard=transport.guard(SERVICE_NAME, SERVICE_ONLY_RPCS, domain=domain)
        if transport is not None and guarded
        else None,
    )
    # A named health service per provider, so an upstream outage never fails process liveness.
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if adapter.enabled
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await running.health.set(f"provider.{adapter.name}", status)
    register_adapter_gauges(
        telemetry,
        adapter.name,
        in_flight=lambda: servicer.in_flight,
        limit=lambda: adapter.max_concurrency,
    )
    return running, servicer


def run_adapter(
    build: Callable[[Telemetry], Adapter], *, address: str, common: CommonSettings, name: str
) -> None:
    """Blocking entry point used by each adapter's `__main__`."""
    configure_logging(f"adapter-{name}", level=common.log_level, fmt=common.log_format)
    transport = startup_transport(address, name, internal=False)

    async def main() -> None:
        telemetry = setup_telemetry(
            f"adapter-{name}", metrics_addr=metrics_address(f"adapter-{name}")
        )
        adapter = build(telemetry)
        running, _ = await start_adapter_server(
            adapter,
            address=address,
            telemetry=telemetry,
            input_limits=InputLimits(max_bytes=common.max_input_image_bytes),
            transport=transport,
        )
        log.info(
            "adapter listening",
            extra={"provider": name, "address": running.address, "enabled": adapter.enabled},
        )
        try:
            await serve_until_signal(running, grace=common.shutdown_grace_seconds)
        finally:
            await adapter.aclose()
            telemetry.shutdown()

    run_loop(main(), common.event_loop)
