"""Server factory: grpc.aio server with health, reflection, error mapping and graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from imagegate.grpckit.address import check_address
from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.interceptors import ErrorInterceptor
from imagegate.grpckit.options import SERVER_OPTIONS, reuse_port_options
from imagegate.grpckit.reflection import enable_reflection
from imagegate.grpckit.security import Transport
from imagegate.grpckit.service_auth import ServiceGuard, ServiceGuardInterceptor

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.aio.Server], None]


@dataclass
class RunningServer:
    """A started server and the pieces tests and mains need to reach."""

    server: grpc.aio.Server
    """The grpc.aio server."""
    port: int
    """The bound port (useful when asked for port 0)."""
    health: health.aio.HealthServicer
    """Health servicer; named services (e.g. "provider.fal") can be set separately."""
    address: str
    """host:port to dial."""
    health_server: grpc.aio.Server | None = None
    """The plaintext health-only listener beside a TLS port (Transport.health_port), if any."""

    async def stop(self, grace: float = 5.0) -> None:
        """Marks every service NOT_SERVING, then stops accepting and drains in-flight calls."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


async def start_server(
    *,
    address: str,
    registrars: Sequence[Registrar],
    service_names: Sequence[str],
    domain: str,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    maximum_concurrent_rpcs: int | None = None,
    transport: Transport | None = None,
    client_auth: bool = True,
    guard: ServiceGuard | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Builds, binds and starts a server; `address` may use port 0 to pick a free port.

    Interceptors run outermost first: telemetry interceptors passed in wrap the error
    interceptor, so spans see the final status; the service guard runs inside it, so its
    refusals become rich statuses. `transport` None: plaintext, refused off loopback.
    `client_auth`: with TLS and a CA, callers must present a certificate (mTLS).
    `reuse_port` lets several processes bind one port (pre-forked Router workers only); by
    default a second bind fails loudly.
    """
    try:
        check_address(address, variable="listen address", allow_zero=True)
    except ImagegateError as err:
        raise RuntimeError(err.message) from None
    transport = transport or Transport()
    transport.check_listen(address)
    inner = [ServiceGuardInterceptor(guard)] if guard is not None else []
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorInterceptor(domain), *inner],
        options=reuse_port_options() if reuse_port else SERVER_OPTIONS,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
    )
    credentials = transport.server_credentials(client_auth=client_auth)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"could not bind {address}: is the port already in use?")
    await server.start()
    health_server = None
    if credentials is not None and transport.health_port:
        # Only grpc.health, no reflection and no service: what a kubelet probe needs, nothing
        # an attacker could use beyond learning that the process is up.
        health_server = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if health_server.add_insecure_port(f"0.0.0.0:{transport.health_port}") == 0:
            raise RuntimeError(f"could not bind health port {transport.health_port}")
        await health_server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = address.rsplit(":", 1)[0]
    return RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        address=f"{host}:{port}",
        health_server=health_server,
    )


async def serve_until_signal(running: RunningServer, *, grace: float = 5.0) -> None:
    """Waits for SIGINT/SIGTERM, then stops gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server_done = asyncio.ensure_future(running.server.wait_for_termination())
    stop_wait = asyncio.ensure_future(stop.wait())
    await asyncio.wait({server_done, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping (grace %.1fs)", grace)
    await running.stop(grace)
    server_done.cancel()
    stop_wait.cancel()
