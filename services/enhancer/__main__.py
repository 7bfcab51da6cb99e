"""Entry point: `python -m services.enhancer`."""

from __future__ import annotations

import logging

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.security import startup_transport
from imagegate.grpckit.server import serve_until_signal
from imagegate.telemetry import metrics_address, setup_telemetry
from imagegate.telemetry.logs import configure_logging
from services.enhancer.config import EnhancerSettings
from services.enhancer.server import start_enhancer

log = logging.getLogger("services.enhancer")


def main() -> None:
    """Builds settings once and runs the PromptEnhancer until SIGTERM."""
    settings, common = EnhancerSettings(), CommonSettings()
    configure_logging("enhancer", level=common.log_level, fmt=common.log_format)
    transport = startup_transport(settings.addr, "enhancer", internal=False)

    async def run() -> None:
        telemetry = setup_telemetry("enhancer", metrics_addr=metrics_address("enhancer"))
        running, enhancer = await start_enhancer(settings, telemetry, transport=transport)
        log.info(
            "enhancer listening",
            extra={
                "address": running.address,
                "providers": ",".join(c.config.name for c in enhancer.enabled) or "none",
            },
        )
        try:
            await serve_until_signal(running, grace=common.shutdown_grace_seconds)
        finally:
            await enhancer.aclose()
            telemetry.shutdown()

    run_loop(run(), common.event_loop)


if __name__ == "__main__":
    main()
