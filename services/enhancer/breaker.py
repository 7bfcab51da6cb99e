"""A per-provider circuit breaker: consecutive failures open it; Retry-After sets the cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable


class ProviderBreaker:
    """Closed until `failures` calls in a row fail, then open for `open_seconds` (or longer when
    the provider asked with Retry-After); the first call after the cool-down is a probe."""

    def __init__(
        self,
        *,
        failures: int,
        open_seconds: float,
        max_retry_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit, self._open_seconds, self._max_wait = failures, open_seconds, max_retry_after
        self._clock = clock
        self._consecutive = 0
        self._until = 0.0

    def retry_in(self) -> float:
        """Seconds until a call is admitted; 0 when it is now."""
        return max(0.0, self._until - self._clock())

    def allows(self) -> bool:
        """Whether a call may go out now."""
        return self.retry_in() <= 0

    def success(self) -> None:
        """A call succeeded: close."""
        self._consecutive = 0
        self._until = 0.0

    def failure(self, retry_after: float | None = None) -> None:
        """A call failed; a Retry-After the provider sent is honoured at once."""
        self._consecutive += 1
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._until = max(self._until, now + min(retry_after, self._max_wait))
        if self._consecutive >= self._limit:
            self._until = max(self._until, now + self._open_seconds)
