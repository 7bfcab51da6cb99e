"""When the current RPC reached the server: set by the first interceptor, read by handlers."""

from __future__ import annotations

import time
from contextvars import ContextVar

# grpc.aio runs each RPC in its own task, and interceptors in that task before the request is
# read and deserialized, so a value set there is the RPC's own and covers the most of its cost.
_ARRIVED: ContextVar[float | None] = ContextVar("imagegate_rpc_arrived", default=None)


def mark_arrival() -> None:
    """Records now (time.perf_counter) as the current RPC's arrival."""
    _ARRIVED.set(time.perf_counter())


def arrived(default: float) -> float:
    """The current RPC's arrival time, or `default` when no interceptor marked it."""
    value = _ARRIVED.get()
    return default if value is None else value
