"""Entry point: `python -m services.quota`."""

from __future__ import annotations

import asyncio
import logging

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.security import Transport, startup_transport
from imagegate.grpckit.server import serve_until_signal
from imagegate.telemetry import metrics_address, setup_telemetry
from imagegate.telemetry.logs import configure_logging
from services.quota.config import QuotaSettings
from services.quota.gauges import QuotaGauges
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore

log = logging.getLogger(__name__)


async def serve(settings: QuotaSettings, common: CommonSettings, transport: Transport) -> None:
    """Opens the database (migrating it), serves until SIGTERM, then drains."""
    telemetry = setup_telemetry("quota", metrics_addr=metrics_address("quota"))
    store = await asyncio.to_thread(
        QuotaStore.open,
        settings.resolved_database_url(),
        plans=load_plans(),
        schema=settings.database_schema,
        pepper=settings.key_pepper,
        lease_seconds=settings.lease_seconds,
        threads=settings.db_threads,
    )
    # SQL spans cost the store its batched fast path, so by default only when spans are exported.
    if settings.trace_sql if settings.trace_sql is not None else bool(telemetry.processors):
        telemetry.instrument_sqlalchemy(store.engine)
    server = await start_quota_server(
        store,
        address=settings.addr,
        admin_token=settings.admin_token,
        telemetry=telemetry,
        max_lease_seconds=settings.max_lease_seconds,
        sweep_interval=settings.sweep_interval_seconds,
        transport=transport,
    )
    log.info(
        "quota listening",
        extra={"address": server.address, "database": store.engine.dialect.name},
    )
    if not settings.admin_token:
        log.warning("IMAGEGATE_ADMIN_TOKEN is empty: admin RPCs are refused")
    gauges = QuotaGauges(store, telemetry)
    gauges.start()
    try:
        await serve_until_signal(server.running, grace=common.shutdown_grace_seconds)
    finally:
        await gauges.stop()
        await server.stop(grace=0)
        telemetry.shutdown()


def main() -> None:
    """Builds settings once and runs the Quota service until SIGTERM."""
    common = CommonSettings()
    settings = QuotaSettings()
    configure_logging("quota", level=common.log_level, fmt=common.log_format)
    transport = startup_transport(
        settings.addr,
        "quota",
        internal=True,
        pepper=settings.key_pepper,
        admin_token=settings.admin_token,
    )
    run_loop(serve(settings, common, transport), common.event_loop)


if __name__ == "__main__":
    main()
