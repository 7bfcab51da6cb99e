"""A TTL cache of rewrites keyed by everything that shapes one (prompt, style, model, ...)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from imagegate.enhancer.v1 import enhancer_pb2


def cache_key(request: enhancer_pb2.EnhancePromptRequest) -> bytes:
    """Digest of the request: identical (prompt, style, model, conventions) share one entry."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


class RewriteCache:
    """Least-recently-used entries, each valid for `ttl` seconds."""

    def __init__(
        self, *, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl, self._max, self._clock = ttl, max_entries, clock
        self._entries: OrderedDict[bytes, tuple[float, enhancer_pb2.EnhancePromptResponse]] = (
            OrderedDict()
        )

    def get(self, key: bytes) -> enhancer_pb2.EnhancePromptResponse | None:
        """A copy of the cached answer, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, response = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        copy = enhancer_pb2.EnhancePromptResponse()
        copy.CopyFrom(response)
        return copy

    def put(self, key: bytes, response: enhancer_pb2.EnhancePromptResponse) -> None:
        """Keeps `response` for the TTL (a no-op when caching is off)."""
        if self._ttl <= 0 or self._max <= 0:
            return
        kept = enhancer_pb2.EnhancePromptResponse()
        kept.CopyFrom(response)
        self._entries[key] = (self._clock() + self._ttl, kept)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
