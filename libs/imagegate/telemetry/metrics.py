"""Metrics nobody else owns: quota used/remaining per tenant, in-flight generations per adapter."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Observation

from imagegate.telemetry.setup import Telemetry


@dataclass(frozen=True)
class QuotaSample:
    """One tenant's position in one quota window."""

    tenant_id: str
    """Tenant id (never an API key)."""
    unit: str
    """What is counted: "micro_usd", "images", "requests"."""
    used: int
    """Consumed so far in the window (reserved included)."""
    limit: int
    """The window's limit; 0 means unlimited (no remaining is reported)."""
    window: str = "month"
    """The window's name: "month", "day", "minute"."""


class QuotaMetrics:
    """Observable gauges imagegate.quota.used / .limit / .remaining, one series per tenant+unit.

    The Quota service calls `update()` after every reserve/commit/release (cheap: a dict write);
    the gauges are read at scrape/export time from that snapshot, so no database query runs on
    the exporter's thread. `source` may instead return a full snapshot when called.
    The number of tenants kept is bounded (least recently updated dropped first) so one noisy
    deployment cannot explode Prometheus cardinality.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        source: Callable[[], Iterable[QuotaSample]] | None = None,
        max_series: int = 5000,
    ) -> None:
        self._lock = threading.Lock()
        self._samples: OrderedDict[tuple[str, str, str], QuotaSample] = OrderedDict()
        self._source = source
        self._max = max_series
        meter = telemetry.meter_provider.get_meter("imagegate.quota")
        meter.create_observable_gauge(
            "imagegate.quota.used",
            callbacks=[self._observe(lambda s: s.used)],
            unit="{unit}",
            description="Quota consumed in the current window, per tenant and unit.",
        )
        meter.create_observable_gauge(
            "imagegate.quota.limit",
            callbacks=[self._observe(lambda s: s.limit if s.limit > 0 else None)],
            unit="{unit}",
            description="Quota limit of the current window (absent when unlimited).",
        )
        meter.create_observable_gauge(
            "imagegate.quota.remaining",
            callbacks=[self._observe(lambda s: max(0, s.limit - s.used) if s.limit > 0 else None)],
            unit="{unit}",
            description="Quota left in the current window (absent when unlimited).",
        )

    def update(self, sample: QuotaSample) -> None:
        """Records a tenant's latest position."""
        key = (sample.tenant_id, sample.unit, sample.window)
        with self._lock:
            self._samples[key] = sample
            self._samples.move_to_end(key)
            while len(self._samples) > self._max:
                self._samples.popitem(last=False)

    def forget(self, tenant_id: str) -> None:
        """Drops a tenant's series (tenant deleted)."""
        with self._lock:
            for key in [k for k in self._samples if k[0] == tenant_id]:
                del self._samples[key]

    def _snapshot(self) -> list[QuotaSample]:
        if self._source is not None:
            return list(self._source())
        with self._lock:
            return list(self._samples.values())

    def _observe(
        self, value: Callable[[QuotaSample], int | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for s in self._snapshot():
                v = value(s)
                if v is not None:
                    out.append(
                        Observation(
                            v,
                            {
                                "imagegate.tenant_id": s.tenant_id,
                                "imagegate.quota.unit": s.unit,
                                "imagegate.quota.window": s.window,
                            },
                        )
                    )
            return out

        return callback


def register_adapter_gauges(
    telemetry: Telemetry,
    provider: str,
    *,
    in_flight: Callable[[], int],
    limit: Callable[[], int] | None = None,
) -> None:
    """imagegate.adapter.in_flight (and .concurrency_limit) for one adapter process.

    Wire in the adapter main: `register_adapter_gauges(telemetry, adapter.name,
    in_flight=lambda: servicer.in_flight, limit=lambda: adapter.max_concurrency)`.
    """
    meter = telemetry.meter_provider.get_meter("imagegate.adapter")
    attrs = {"imagegate.provider": provider}

    def observe_in_flight(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(in_flight(), attrs)]

    meter.create_observable_up_down_counter(
        "imagegate.adapter.in_flight",
        callbacks=[observe_in_flight],
        unit="{generation}",
        description="Generations running in this adapter now.",
    )
    if limit is not None:
        read_limit = limit

        def observe_limit(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read_limit(), attrs)]

        meter.create_observable_gauge(
            "imagegate.adapter.concurrency_limit",
            callbacks=[observe_limit],
            unit="{generation}",
            description="Most generations this adapter runs at once.",
        )
