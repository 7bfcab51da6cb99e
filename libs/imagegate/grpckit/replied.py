"""A per-RPC signal that its answer has left, so follow-up work never delays the answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")

# Longest follow-up work waits for its RPC to end (a done callback that never came).
MAX_WAIT_SECONDS = 1.0


class Replied:
    """Set when the RPC it was made for has ended (answer and status sent, or cancelled).

    Work started just before a handler returns (settlement deliveries, the result-store write)
    runs on the same event loop as the answer's own serialization and send; started at once, it
    ran first and the caller waited ~1 ms longer (measured: docs/performance.md).
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @classmethod
    def of(cls, context: Any) -> Replied:
        """Set by `context`'s done callback; already set when the context takes no callbacks."""
        replied = cls()
        try:
            context.add_done_callback(lambda _ctx: replied._event.set())
        except (AttributeError, NotImplementedError, RuntimeError):
            replied._event.set()
        return replied

    @classmethod
    def already(cls) -> Replied:
        """One that is set: for work with no RPC to wait for."""
        replied = cls()
        replied._event.set()
        return replied

    def is_set(self) -> bool:
        """Whether the RPC has ended."""
        return self._event.is_set()

    async def wait(self, cap: float = MAX_WAIT_SECONDS) -> None:
        """Until the RPC has ended, at most `cap` seconds."""
        if self._event.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cap):
                await self._event.wait()

    async def then(self, work: Awaitable[_T]) -> _T:
        """`work`, awaited once the RPC has ended."""
        await self.wait()
        return await work
