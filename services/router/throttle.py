"""Failover budget with gRPC A6 retry-throttling arithmetic, so a sick fleet is not amplified."""

from __future__ import annotations


class RetryThrottle:
    """A token bucket: a failure takes one token, a success returns `token_ratio`.

    Failing over (a second or later attempt for the same request) is allowed only while more
    than half of `max_tokens` remain. Arithmetic is in thousandths, as in gRPC C-core.
    """

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self._max = int(max_tokens * 1000)
        self._ratio = int(token_ratio * 1000)
        self._tokens = self._max

    @property
    def tokens(self) -> float:
        """Tokens left."""
        return self._tokens / 1000

    def allowed(self) -> bool:
        """Whether another failover may be attempted now."""
        return self._tokens > self._max // 2

    def on_failure(self) -> bool:
        """Records a failed attempt that would fail over; returns whether failover is allowed."""
        self._tokens = max(0, self._tokens - 1000)
        return self.allowed()

    def on_success(self) -> None:
        """Records a successful attempt."""
        self._tokens = min(self._max, self._tokens + self._ratio)
