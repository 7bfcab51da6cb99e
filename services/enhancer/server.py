"""Factory that builds and starts the PromptEnhancer in-process (used by main and tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from grpc_health.v1 import health_pb2

from imagegate.enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc
from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.telemetry import Telemetry
from services.enhancer.chat import ChatClient
from services.enhancer.config import EnhancerSettings
from services.enhancer.enhancer import DOMAIN, PromptEnhancer
from services.enhancer.servicer import EnhancerServicer

SERVICE_NAME = enhancer_pb2.DESCRIPTOR.services_by_name["EnhancerService"].full_name
# Named health service that reports whether any text provider is configured, so an upstream
# outage or a missing key never fails the process's liveness.
PROVIDERS_HEALTH = "enhancer.providers"
# A rewrite spends a text provider's credit: only services may ask for one.
SERVICE_ONLY_RPCS = ("EnhancePrompt",)


async def start_enhancer(
    settings: EnhancerSettings,
    telemetry: Telemetry | None,
    *,
    address: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    transport: Transport | None = None,
) -> tuple[RunningServer, PromptEnhancer]:
    """Builds the provider clients once and starts serving on `address` (port 0 picks one).

    With a `transport` that has a service token or mTLS, EnhancePrompt admits only services.
    """
    clients = [ChatClient(config, telemetry=telemetry) for config in settings.providers()]
    meter = telemetry.meter if telemetry is not None else None
    enhancer = PromptEnhancer(settings, clients, clock=clock, meter=meter)
    servicer = EnhancerServicer(enhancer)
    running = await start_server(
        address=address or settings.addr,
        registrars=[lambda s: enhancer_pb2_grpc.add_EnhancerServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        domain=DOMAIN,
        interceptors=telemetry.server_interceptors() if telemetry is not None else (),
        transport=transport,
        guard=transport.guard(SERVICE_NAME, SERVICE_ONLY_RPCS, domain=DOMAIN)
        if transport is not None and transport.has_service_identity
        else None,
    )
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if enhancer.enabled
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await running.health.set(PROVIDERS_HEALTH, status)
    return running, enhancer
