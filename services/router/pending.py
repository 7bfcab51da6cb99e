"""Background work per tenant (releases of abandoned requests), so a tenant's reads can wait for it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class PendingWork:
    """Tasks keyed by tenant: read-your-writes waits for the tenant's, shutdown for all."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Task[Any]]] = {}

    def spawn(self, key: str, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Runs `work` in the background under `key`; returns its task."""
        task = asyncio.create_task(work)
        tasks = self._by_key.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(lambda t: self._done(key, t))
        return task

    async def run(self, key: str, work: Coroutine[Any, Any, _T]) -> _T:
        """Runs `work` to the end even if the caller is cancelled meanwhile; returns its result."""
        return await asyncio.shield(self.spawn(key, work))

    async def wait(self, key: str, timeout: float) -> bool:
        """Waits (at most `timeout`) for `key`'s tasks running now; True when none is left."""
        tasks = self._by_key.get(key)
        if not tasks:
            return True
        _, left = await asyncio.wait(set(tasks), timeout=timeout)
        return not left

    async def wait_all(self, timeout: float) -> None:
        """Waits (at most `timeout`) for every task running now."""
        tasks = {t for ts in self._by_key.values() for t in ts}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _done(self, key: str, task: asyncio.Task[Any]) -> None:
        tasks = self._by_key.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._by_key[key]
