"""Latency samples, percentiles and the per-run record every scenario returns."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class RunStats:
    """What one closed-loop run measured (latencies in seconds)."""

    label: str
    """Which path, e.g. "router" or "echo"."""
    concurrency: int
    """Requests kept in flight."""
    latencies: list[float] = field(default_factory=list)
    """Client-side latency of every successful call."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failed calls by gRPC status code name."""
    error_samples: dict[str, str] = field(default_factory=dict)
    """The first message seen for each error code."""
    elapsed: float = 0.0
    """Wall time of the measured part of the run."""
    reported_overhead_ms: list[float] = field(default_factory=list)
    """The Router's own overhead from its trailing metadata, when present."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time each watched server process used during the run."""

    @property
    def ok(self) -> int:
        """Successful calls."""
        return len(self.latencies)

    @property
    def requests(self) -> int:
        """All calls."""
        return self.ok + sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Successful calls per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def pct_ms(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        return percentile(sorted(self.latencies), q) * 1000

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (latencies in ms)."""
        lat = sorted(self.latencies)
        over = sorted(self.reported_overhead_ms)
        out: dict[str, Any] = {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "elapsed_s": round(self.elapsed, 4),
            "rps": round(self.rps, 1),
        }
        for q in (50, 95, 99):
            out[f"p{q}_ms"] = _r(percentile(lat, q) * 1000)
        out["max_ms"] = _r(lat[-1] * 1000) if lat else None
        if self.cpu_seconds and self.requests:
            out["cpu_ms_per_req"] = {
                name: round(sec * 1000 / self.requests, 3) for name, sec in self.cpu_seconds.items()
            }
            out["server_cpu_ms_per_req"] = round(
                sum(self.cpu_seconds.values()) * 1000 / self.requests, 3
            )
        if over:
            out["router_overhead_ms"] = {f"p{q}": _r(percentile(over, q)) for q in (50, 95, 99)}
        return out


def _r(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)
