"""Builds and starts the Quota gRPC server with its lease sweeper (used by main and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.telemetry import Telemetry
from services.quota.servicer import QuotaServicer
from services.quota.store import DOMAIN, QuotaStore

log = logging.getLogger(__name__)

SERVICE_NAME = quota_pb2.DESCRIPTOR.services_by_name["QuotaService"].full_name
# Only services may call these (a client certificate or the service token), never a tenant key:
# they spend, settle or read any tenant's quota. Admin RPCs take the admin token instead.
SERVICE_ONLY_RPCS = (
    "AuthenticateApiKey",
    "ReserveQuota",
    "BatchReserveQuota",
    "CommitReservation",
    "BatchCommitReservations",
    "ReleaseReservation",
    "ReleaseClaims",
    "GetQuota",
)


@dataclass
class QuotaServer:
    """A running Quota server, its store and its sweeper task."""

    running: RunningServer
    """The gRPC server."""
    store: QuotaStore
    """The store behind it."""
    sweeper: asyncio.Task[None] | None
    """Background lease sweeper (None when disabled)."""
    servicer: QuotaServicer | None = None
    """The servicer, drained of its pending releases before the store closes."""

    @property
    def address(self) -> str:
        """host:port to dial."""
        return self.running.address

    async def stop(self, grace: float = 1.0) -> None:
        """Stops the sweeper, drains the server and closes the store."""
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        await self.running.stop(grace)
        if self.servicer is not None:
            await self.servicer.drain()
        try:
            await self.store.flush_key_use()
        except Exception:
            log.exception("could not record API key use at stop")
        await self.store.close()


async def sweep_forever(store: QuotaStore, interval: float) -> None:
    """Returns the units of expired leases every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            expired = await store.expire_leases()
            if expired:
                log.info("expired leases returned", extra={"count": expired})
        except Exception:
            log.exception("lease sweep failed; will retry")
        try:
            await store.flush_key_use()
        except Exception:
            log.exception("could not record API key use; will retry")


async def start_quota_server(
    store: QuotaStore,
    *,
    address: str,
    admin_token: str,
    telemetry: Telemetry,
    max_lease_seconds: float = 3600.0,
    sweep_interval: float | None = 5.0,
    transport: Transport | None = None,
) -> QuotaServer:
    """Starts QuotaService on `address` (port 0 picks a free port).

    With a `transport`, SERVICE_ONLY_RPCS admit only services (main always passes one);
    without, they are open (in-process tests on loopback).
    """
    servicer = QuotaServicer(store, admin_token=admin_token, max_lease_seconds=max_lease_seconds)
    running = await start_server(
        address=address,
        registrars=[lambda s: quota_pb2_grpc.add_QuotaServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        domain=DOMAIN,
        interceptors=telemetry.server_interceptors(),
        transport=transport,
        guard=transport.guard(SERVICE_NAME, SERVICE_ONLY_RPCS, domain=DOMAIN)
        if transport
        else None,
    )
    sweeper = (
        asyncio.create_task(sweep_forever(store, sweep_interval), name="quota-sweeper")
        if sweep_interval
        else None
    )
    return QuotaServer(running=running, store=store, sweeper=sweeper, servicer=servicer)
