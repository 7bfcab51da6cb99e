"""Entry point: `python -m services.router`."""

from __future__ import annotations

import logging

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.security import startup_transport
from imagegate.grpckit.server import serve_until_signal
from imagegate.telemetry import metrics_address, setup_telemetry
from imagegate.telemetry.logs import configure_logging
from services.router.config import RouterSettings
from services.router.server import start_router
from services.router.workers import supervise, worker_settings

log = logging.getLogger("services.router")


def main() -> None:
    """Builds settings once and serves until SIGINT/SIGTERM, then drains and settles."""
    settings = RouterSettings()
    common = CommonSettings()
    configure_logging("router", level=common.log_level, fmt=common.log_format)
    transport = startup_transport(settings.addr, "router", internal=False)

    if settings.workers > 1 and settings.worker_index is None:
        run_loop(supervise(settings, metrics_address("router")), common.event_loop)
        return
    settings = worker_settings(settings)

    async def run() -> None:
        telemetry = setup_telemetry("router", metrics_addr=metrics_address("router"))
        running, app, handle = await start_router(settings, telemetry, transport=transport)
        log.info(
            "router listening",
            extra={
                "address": running.address,
                "adapters": ",".join(settings.adapter_targets()),
                "replica_id": handle.app.replica_id,
            },
        )
        try:
            await serve_until_signal(running, grace=settings.shutdown_grace_seconds)
        finally:
            await app.close()
            for channel in handle.channels:
                await channel.close()
            telemetry.shutdown()

    run_loop(run(), common.event_loop)


if __name__ == "__main__":
    main()
