"""Circuit breakers with a sliding window, growing open waits and bounded half-open probes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    """Breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> int:
        """0 closed, 1 half-open, 2 open (the breaker.state gauge)."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


@dataclass(frozen=True)
class BreakerConfig:
    """How a breaker decides; the defaults suit image generation (seconds-long calls)."""

    window: int = 20
    """Calls in the sliding (count-based) window."""
    minimum_calls: int = 10
    """Calls in the window before the failure- and slow-rate rules apply."""
    failure_rate: float = 0.5
    """Failure rate (0-1) at or above which the breaker opens."""
    consecutive_failures: int = 5
    """Consecutive failures that open the breaker whatever the volume."""
    slow_call_seconds: float | None = 60.0
    """A successful call at least this slow counts as slow; None disables the rule."""
    slow_call_rate: float = 0.8
    """Slow-call rate (0-1) at or above which the breaker opens."""
    open_seconds: float = 5.0
    """Wait before the first half-open probe."""
    max_open_seconds: float = 120.0
    """Cap of the wait, which doubles on each trip in a streak."""
    open_multiplier: float = 2.0
    """Growth of the wait per repeated trip."""
    half_open_probes: int = 1
    """Probes admitted at once while half-open."""
    probe_max_seconds: float = 150.0
    """A probe unresolved after this long is presumed lost and its slot is reused."""
    latency_samples: int = 200
    """Successful-call latencies kept for percentiles."""


Clock = Callable[[], float]
TransitionListener = Callable[["CircuitBreaker", BreakerState, BreakerState, str], None]


@dataclass(eq=False)
class Permit:
    """Leave to make one call; resolve it exactly once with success, failure or release."""

    started: float
    """Clock time the call started."""
    probe: bool
    """Whether it is a half-open probe."""
    episode: int
    """Breaker episode it belongs to; results from older episodes do not move the state."""
    done: bool = False
    """Resolved already."""


@dataclass
class BreakerSnapshot:
    """What GetProviderStatus reports for one breaker."""

    name: str
    state: BreakerState
    error_rate: float
    window_calls: int
    latency_p50: float | None
    latency_p95: float | None
    in_flight: int
    retry_at: float | None
    trips: int
    last_error_reason: str
    not_permitted: int


@dataclass
class _Window:
    size: int
    calls: deque[tuple[bool, bool]] = field(default_factory=deque)
    failures: int = 0
    slow: int = 0

    def add(self, failed: bool, slow: bool) -> None:
        self.calls.append((failed, slow))
        self.failures += failed
        self.slow += slow
        if len(self.calls) > self.size:
            old_failed, old_slow = self.calls.popleft()
            self.failures -= old_failed
            self.slow -= old_slow

    def clear(self) -> None:
        self.calls.clear()
        self.failures = self.slow = 0


class CircuitBreaker:
    """One breaker (a provider, or a provider model). Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Clock = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._window = _Window(config.window)
        self._consecutive = 0
        self._open_until = 0.0
        self._rate_limited = False
        self._tripped_window: tuple[float, int] = (0.0, 0)
        self._streak = 0
        self._last_close = clock()
        self._episode = 0
        self._probes: list[Permit] = []
        self._latencies: deque[float] = deque(maxlen=config.latency_samples)
        self._sorted: list[float] | None = None
        self.in_flight = 0
        self.trips = 0
        self.not_permitted = 0
        self.last_error_reason = ""

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose wait is over reports half-open)."""
        self._advance(self._clock())
        return self._state

    @property
    def retry_at(self) -> float | None:
        """Clock time an open breaker admits its next probe (None unless open now)."""
        self._advance(self._clock())
        return self._open_until if self._state is BreakerState.OPEN else None

    @property
    def rate_limited(self) -> bool:
        """Whether it is open because the provider asked us to back off (429 + Retry-After)."""
        self._advance(self._clock())
        return self._state is BreakerState.OPEN and self._rate_limited

    def try_acquire(self, *, force: bool = False) -> Permit | None:
        """A permit, or None when the call must not be made.

        `force` starts the half-open phase early (used when every candidate is open and the
        Router sends one last-resort probe); it never overrides a provider's Retry-After.
        """
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.OPEN and force and not self._rate_limited:
            self._transition(BreakerState.HALF_OPEN, "last-resort probe", now)
        if self._state is BreakerState.CLOSED:
            self.in_flight += 1
            return Permit(started=now, probe=False, episode=self._episode)
        if self._state is BreakerState.HALF_OPEN:
            limit = self.config.probe_max_seconds
            self._probes = [p for p in self._probes if not p.done and now - p.started < limit]
            if len(self._probes) < self.config.half_open_probes:
                permit = Permit(started=now, probe=True, episode=self._episode)
                self._probes.append(permit)
                self.in_flight += 1
                return permit
        self.not_permitted += 1
        return None

    def on_success(self, permit: Permit, duration: float) -> None:
        """The call returned what was asked."""
        if not self._resolve(permit):
            return
        now = self._clock()
        self._latencies.append(duration)
        self._sorted = None
        slow = (
            self.config.slow_call_seconds is not None and duration >= self.config.slow_call_seconds
        )
        if permit.episode != self._episode:
            return
        if self._state is BreakerState.HALF_OPEN and permit.probe:
            if slow:
                self._trip(now, "half-open probe was slow")
            else:
                self._close(now)
            return
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.add(False, slow)
            self._evaluate(now)

    def on_failure(self, permit: Permit, reason: str, *, retry_after: float | None = None) -> None:
        """The call failed in a way that says the provider is unhealthy.

        `retry_after` (a 429 with Retry-After) opens the breaker for exactly that long.
        """
        if not self._resolve(permit):
            return
        now = self._clock()
        self.last_error_reason = reason
        if retry_after is not None and retry_after > 0:
            self._window.add(True, False)
            self._trip(now, f"{reason}: retry after {retry_after:g}s", wait=retry_after)
            return
        if permit.episode != self._episode:
            return
        if self._state is BreakerState.HALF_OPEN and permit.probe:
            self._trip(now, f"half-open probe failed: {reason}")
            return
        if self._state is BreakerState.CLOSED:
            self._consecutive += 1
            self._window.add(True, False)
            self._evaluate(now, reason)

    def release(self, permit: Permit) -> None:
        """The call ended without saying anything about health (moderation, caller cancelled)."""
        self._resolve(permit)

    def snapshot(self) -> BreakerSnapshot:
        """Current figures."""
        state = self.state
        n = len(self._window.calls)
        rate = self._window.failures / n if n else 0.0
        if state is BreakerState.OPEN and n == 0:
            rate, n = self._tripped_window
        return BreakerSnapshot(
            name=self.name,
            state=state,
            error_rate=rate,
            window_calls=n,
            latency_p50=self.latency_quantile(0.50),
            latency_p95=self.latency_quantile(0.95),
            in_flight=self.in_flight,
            retry_at=self.retry_at,
            trips=self.trips,
            last_error_reason=self.last_error_reason,
            not_permitted=self.not_permitted,
        )

    def latency_quantile(self, q: float, *, min_samples: int = 1) -> float | None:
        """Quantile of recent successful-call latencies, or None with too few samples."""
        if len(self._latencies) < max(1, min_samples):
            return None
        if self._sorted is None:
            self._sorted = sorted(self._latencies)
        values = self._sorted
        return values[min(len(values) - 1, int(q * len(values)))]

    def _resolve(self, permit: Permit) -> bool:
        if permit.done:
            return False
        permit.done = True
        self.in_flight = max(0, self.in_flight - 1)
        if permit.probe and permit in self._probes:
            self._probes.remove(permit)
        return True

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, "open wait elapsed", now)

    def _evaluate(self, now: float, reason: str = "") -> None:
        cfg = self.config
        if self._consecutive >= cfg.consecutive_failures:
            self._trip(now, f"{self._consecutive} consecutive failures ({reason})")
            return
        n = len(self._window.calls)
        if n < cfg.minimum_calls:
            return
        if self._window.failures / n >= cfg.failure_rate:
            self._trip(now, f"failure rate {self._window.failures}/{n}")
        elif cfg.slow_call_seconds is not None and self._window.slow / n >= cfg.slow_call_rate:
            self._trip(now, f"slow-call rate {self._window.slow}/{n}")

    def _trip(self, now: float, reason: str, *, wait: float | None = None) -> None:
        cfg = self.config
        if self._state is BreakerState.CLOSED and now - self._last_close >= cfg.max_open_seconds:
            self._streak = 0
        self._streak += 1
        self._rate_limited = wait is not None
        if wait is None:
            wait = min(
                cfg.max_open_seconds, cfg.open_seconds * cfg.open_multiplier ** (self._streak - 1)
            )
        self._open_until = now + wait
        self.trips += 1
        # What tripped it stays visible while it is open (the window restarts empty).
        n = len(self._window.calls)
        self._tripped_window = (self._window.failures / n if n else 1.0, n)
        self._window.clear()
        self._consecutive = 0
        self._probes.clear()
        self._episode += 1
        self._transition(BreakerState.OPEN, reason, now)

    def _close(self, now: float) -> None:
        self._window.clear()
        self._consecutive = 0
        self._probes.clear()
        self._rate_limited = False
        self._episode += 1
        self._last_close = now
        self._transition(BreakerState.CLOSED, "half-open probe succeeded", now)

    def _transition(self, new: BreakerState, reason: str, now: float) -> None:
        old = self._state
        self._state = new
        if new is BreakerState.HALF_OPEN:
            self._probes.clear()
        if old is not new and self._on_transition is not None:
            self._on_transition(self, old, new, reason)


class BreakerRegistry:
    """Breakers per provider and per provider model, created on first use."""

    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Clock = time.monotonic,
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    @property
    def clock(self) -> Clock:
        """The clock every breaker here reads (retry_at values are in its time)."""
        return self._clock

    def get(self, provider: str, provider_model: str = "") -> CircuitBreaker:
        """The breaker of a provider (model "") or of one provider model."""
        key = (provider, provider_model)
        breaker = self._breakers.get(key)
        if breaker is None:
            name = f"{provider}/{provider_model}" if provider_model else provider
            breaker = CircuitBreaker(
                name, self.config, clock=self._clock, on_transition=self._on_transition
            )
            self._breakers[key] = breaker
        return breaker

    def items(self) -> list[tuple[tuple[str, str], CircuitBreaker]]:
        """Every breaker, providers first."""
        return sorted(self._breakers.items(), key=lambda kv: (kv[0][0], kv[0][1]))
