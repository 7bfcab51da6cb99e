"""Builds and starts the Metering gRPC server (used by main and tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imagegate.grpckit.security import Transport
from imagegate.grpckit.server import RunningServer, start_server
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.telemetry import Telemetry
from services.metering.servicer import MeteringServicer
from services.metering.store import DOMAIN, MeteringStore

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


@dataclass
class MeteringServer:
    """A running Metering server and its store."""

    running: RunningServer
    """The gRPC server."""
    store: MeteringStore
    """The store behind it."""

    @property
    def address(self) -> str:
        """host:port to dial."""
        return self.running.address

    async def stop(self, grace: float = 1.0, *, close_store: bool = True) -> None:
        """Drains the server, then closes the store (unless another server reuses it)."""
        await self.running.stop(grace)
        if close_store:
            await self.store.close()


# Only services may call these: they write the ledger or read any tenant's usage. The price
# catalog (QuotePrice, ListPrices) is public.
SERVICE_ONLY_RPCS = ("RecordUsage", "BatchRecordUsage", "GetUsageSummary", "ListUsageRecords")


async def start_metering_server(
    store: MeteringStore,
    *,
    address: str,
    telemetry: Telemetry,
    admin_token: str = "",
    plan_prices: Mapping[str, int] | None = None,
    transport: Transport | None = None,
) -> MeteringServer:
    """Starts MeteringService on `address` (port 0 picks a free port).

    `admin_token` guards the margin report (refused when empty); `plan_prices` (plan id ->
    monthly micro-USD) prices its revenue. With a `transport`, SERVICE_ONLY_RPCS admit only
    services (main always passes one).
    """
    servicer = MeteringServicer(store, admin_token=admin_token, plan_prices=plan_prices)
    running = await start_server(
        address=address,
        registrars=[lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        domain=DOMAIN,
        interceptors=telemetry.server_interceptors(),
        transport=transport,
        guard=transport.guard(SERVICE_NAME, SERVICE_ONLY_RPCS, domain=DOMAIN)
        if transport
        else None,
    )
    return MeteringServer(running=running, store=store)
