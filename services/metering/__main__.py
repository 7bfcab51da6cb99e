"""Entry point: `python -m services.metering`."""

from __future__ import annotations

import asyncio
import logging

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.security import Transport, startup_transport
from imagegate.grpckit.server import serve_until_signal
from imagegate.telemetry import metrics_address, setup_telemetry
from imagegate.telemetry.logs import configure_logging
from services.metering.catalog import load_catalog
from services.metering.config import MeteringSettings
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans

log = logging.getLogger(__name__)


async def serve(settings: MeteringSettings, common: CommonSettings, transport: Transport) -> None:
    """Opens the database (migrating it), serves until SIGTERM, then drains."""
    telemetry = setup_telemetry("metering", metrics_addr=metrics_address("metering"))
    catalog = load_catalog(settings.prices_path)
    store = await asyncio.to_thread(
        MeteringStore.open,
        settings.resolved_database_url(),
        catalog=catalog,
        schema=settings.database_schema,
        threads=settings.db_threads,
    )
    # SQL spans cost the store its batched fast path, so by default only when spans are exported.
    if settings.trace_sql if settings.trace_sql is not None else bool(telemetry.processors):
        telemetry.instrument_sqlalchemy(store.engine)
    plans = load_plans(settings.plans_path)
    server = await start_metering_server(
        store,
        address=settings.addr,
        telemetry=telemetry,
        admin_token=settings.admin_token,
        plan_prices={plan.id: plan.price_micros for plan in plans.values()},
        transport=transport,
    )
    log.info(
        "metering listening",
        extra={
            "address": server.address,
            "database": store.engine.dialect.name,
            "catalog_version": catalog.version,
        },
    )
    try:
        await serve_until_signal(server.running, grace=common.shutdown_grace_seconds)
    finally:
        await store.close()
        telemetry.shutdown()


def main() -> None:
    """Builds settings once and runs the Metering service until SIGTERM."""
    common = CommonSettings()
    settings = MeteringSettings()
    configure_logging("metering", level=common.log_level, fmt=common.log_format)
    transport = startup_transport(settings.addr, "metering", internal=True)
    run_loop(serve(settings, common, transport), common.event_loop)


if __name__ == "__main__":
    main()
