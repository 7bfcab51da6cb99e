"""Factory that builds and starts a Router in-process (used by main, tests and integration)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from imagegate.enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.grpckit.service_auth import with_metadata
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.provider.v1 import provider_pb2
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.results import results_store_from_url
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from imagegate.settlement import Settler
from imagegate.telemetry import Telemetry
from services.router.adapters import AdapterPool
from services.router.app import RouterApp
from services.router.breaker import BreakerConfig, BreakerRegistry
from services.router.catalog import load_catalog
from services.router.config import RouterSettings
from services.router.generations import Generations
from services.router.observability import RouterMetrics, breaker_transition_handler
from services.router.prices import PriceMirror
from services.router.servicer import RouterServicer
from services.router.workers import outbox_name

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
QUOTA_SERVICE = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
METERING_SERVICE = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
PROVIDER_SERVICE = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
ENHANCER_SERVICE = enhancer_pb2.DESCRIPTOR.services_by_name["EnhancerService"].full_name


def breaker_config(settings: RouterSettings) -> BreakerConfig:
    """The breaker parameters from settings."""
    return BreakerConfig(
        window=settings.breaker_window,
        minimum_calls=settings.breaker_minimum_calls,
        failure_rate=settings.breaker_failure_rate,
        consecutive_failures=settings.breaker_consecutive_failures,
        slow_call_seconds=settings.breaker_slow_call_seconds or None,
        slow_call_rate=settings.breaker_slow_call_rate,
        open_seconds=settings.breaker_open_seconds,
        max_open_seconds=settings.breaker_max_open_seconds,
        half_open_probes=settings.breaker_half_open_probes,
        probe_max_seconds=settings.breaker_probe_max_seconds,
    )


def quota_service_config(settings: RouterSettings) -> str:
    """gRPC A6 retries for the idempotent Quota calls on the hot path, UNAVAILABLE only.

    ReserveQuota (and BatchReserveQuota, per item) is idempotent on (tenant, request_id) and
    AuthenticateApiKey reads, so a transient UNAVAILABLE (a Quota restart) is retried by the
    channel, honouring server pushback.
    """
    names = [
        {"service": "imagegate.quota.v1.QuotaService", "method": m}
        for m in ("ReserveQuota", "BatchReserveQuota", "AuthenticateApiKey")
    ]
    if settings.quota_retry_attempts < 2:
        return json.dumps({})
    config = {
        "methodConfig": [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max(2, min(5, settings.quota_retry_attempts)),
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    return json.dumps(config)


@dataclass
class RouterHandle:
    """What the factory started, so the caller can stop it in order."""

    running: RunningServer
    """The gRPC server."""
    app: RouterApp
    """The Router's behaviour (breakers, caches, settler)."""
    channels: list[grpc.aio.Channel]
    """Quota and Metering channels."""

    async def stop(self, grace: float = 5.0) -> None:
        """Drains calls, flushes settlement, closes channels."""
        await self.running.stop(grace)
        await self.app.close()
        for channel in self.channels:
            await channel.close()


async def start_router(
    settings: RouterSettings,
    telemetry: Telemetry,
    *,
    clock: Callable[[], float] = time.monotonic,
    address: str | None = None,
    transport: Transport | None = None,
) -> tuple[RunningServer, RouterApp, RouterHandle]:
    """Builds the Router, dials its downstreams once, and starts serving on `address`.

    Pass `address="127.0.0.1:0"` in tests; the bound address is `running.address`.
    `transport`: TLS for the public port (no client certificate asked), mTLS and the service
    token on every channel to Quota, Metering and the adapters; None: plaintext, no token.
    """
    transport = transport or Transport()
    credentials = transport.channel_credentials()
    service_metadata = transport.outbound_metadata()
    catalog = load_catalog(settings.catalog)
    # Tracing is built into the stubs (traced_stub), not the channels: grpc.aio's client
    # interceptor machinery costs a task and a call wrapper per RPC, five RPCs per request.
    quota_channel = create_channel(
        settings.quota_addr,
        credentials=credentials,
        options=[("grpc.service_config", quota_service_config(settings))],
    )
    metering_channel = create_channel(settings.metering_addr, credentials=credentials)
    quota = telemetry.traced_stub(
        with_metadata(quota_pb2_grpc.QuotaServiceStub(quota_channel), service_metadata),
        QUOTA_SERVICE,
    )
    metering = telemetry.traced_stub(
        with_metadata(metering_pb2_grpc.MeteringServiceStub(metering_channel), service_metadata),
        METERING_SERVICE,
    )
    holder: dict[str, RouterMetrics] = {}
    breakers = BreakerRegistry(
        breaker_config(settings),
        clock=clock,
        on_transition=breaker_transition_handler(lambda: holder.get("m")),
    )
    metrics = RouterMetrics(telemetry.meter, lambda: breakers)
    holder["m"] = metrics
    adapters = AdapterPool(
        settings.adapter_targets(),
        wrap_stub=lambda stub: telemetry.traced_stub(
            with_metadata(stub, service_metadata), PROVIDER_SERVICE
        ),
        credentials=credentials,
        describe_interval=settings.describe_interval_seconds,
        local_provider=catalog.local_provider,
    )
    channels = [quota_channel, metering_channel]
    enhancer = None
    if settings.enhancer_addr:
        enhancer_channel = create_channel(settings.enhancer_addr, credentials=credentials)
        channels.append(enhancer_channel)
        enhancer = telemetry.traced_stub(
            with_metadata(
                enhancer_pb2_grpc.EnhancerServiceStub(enhancer_channel), service_metadata
            ),
            ENHANCER_SERVICE,
        )
    outbox = settings.data_dir / outbox_name(settings)
    outbox.parent.mkdir(parents=True, exist_ok=True)
    app = RouterApp(
        settings=settings,
        catalog=catalog,
        adapters=adapters,
        quota=quota,
        metering=metering,
        settler=Settler(quota=quota, metering=metering, outbox_path=outbox, retry_interval=1.0),
        pricer=PriceMirror(),
        generations=Generations(
            results_store_from_url(settings.results or str(settings.data_dir / "results")),
            retention_seconds=settings.result_retention_seconds,
        ),
        breakers=breakers,
        tracer=telemetry.tracer,
        metrics=metrics,
        clock=clock,
        enhancer=enhancer,
    )
    await app.start()
    servicer = RouterServicer(app)
    running = await start_server(
        address=address or settings.addr,
        registrars=[lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        domain="imagegate.router",
        interceptors=telemetry.server_interceptors(),
        maximum_concurrent_rpcs=settings.maximum_concurrent_rpcs,
        transport=transport,
        client_auth=False,
        # Workers share the port on purpose; everywhere else a second bind must fail.
        reuse_port=settings.worker_index is not None,
    )
    handle = RouterHandle(running=running, app=app, channels=channels)
    return running, app, handle
