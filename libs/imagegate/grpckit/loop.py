"""Runs a service's main coroutine on the event loop its settings name (uvloop by default)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

_T = TypeVar("_T")
EventLoop = Literal["uvloop", "asyncio"]

log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, _T], loop: EventLoop = "uvloop") -> _T:
    """`asyncio.run(main)`, on uvloop unless `loop` is "asyncio" (or uvloop is missing).

    uvloop's libuv loop spends less CPU per callback, timer and socket wake-up than the
    standard loop; grpc.aio drives its completion queue from the running loop either way.
    """
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; running on the standard asyncio loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)
