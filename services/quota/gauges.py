"""Feeds the per-tenant quota gauges (used / limit / remaining) from a periodic snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from imagegate.telemetry import Telemetry
from imagegate.telemetry.metrics import QuotaMetrics, QuotaSample
from services.quota.store import QuotaStore

log = logging.getLogger(__name__)


class QuotaGauges:
    """Refreshes every tenant's position every `interval` seconds, off the request path."""

    def __init__(self, store: QuotaStore, telemetry: Telemetry, *, interval: float = 30.0) -> None:
        self._store = store
        self._metrics = QuotaMetrics(telemetry)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> int:
        """Takes one snapshot; returns how many tenants it covered."""
        tenants = await self._store.list_tenants()
        for tenant in tenants:
            q = await self._store.get_quota(tenant.id)
            self._metrics.update(
                QuotaSample(
                    tenant_id=tenant.id,
                    unit="images",
                    used=q.used_images + q.reserved_images,
                    limit=q.plan.monthly_images,
                )
            )
        return len(tenants)

    def start(self) -> None:
        """Starts the periodic refresh."""
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("quota gauge refresh failed")
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stops the refresh."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
