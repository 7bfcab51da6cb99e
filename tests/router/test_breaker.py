"""Breaker state machine with a fake clock: trips, open wait, half-open probes, recovery."""

from __future__ import annotations

import pytest

from services.router.breaker import BreakerConfig, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def breaker(clock: Clock, **kw: object) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    cfg = BreakerConfig(**{"slow_call_seconds": None, **kw})  # type: ignore[arg-type]
    b = CircuitBreaker(
        "p/m", cfg, clock=clock, on_transition=lambda _b, o, n, _r: seen.append((o.value, n.value))
    )
    return b, seen


def fail(b: CircuitBreaker, reason: str = "PROVIDER_UNAVAILABLE") -> None:
    p = b.try_acquire()
    assert p is not None
    b.on_failure(p, reason)


def ok(b: CircuitBreaker, duration: float = 0.1) -> None:
    p = b.try_acquire()
    assert p is not None
    b.on_success(p, duration)


def test_opens_on_failure_rate_only_after_minimum_volume() -> None:
    clock = Clock()
    b, seen = breaker(clock, window=5, minimum_calls=5, failure_rate=0.5, consecutive_failures=99)
    fail(b), fail(b), fail(b), ok(b)
    assert b.state is BreakerState.CLOSED
    ok(b)
    assert b.state is BreakerState.OPEN and seen == [("closed", "open")]
    assert b.try_acquire() is None and b.not_permitted == 1


def test_slow_successes_open_the_breaker() -> None:
    clock = Clock()
    b, _ = breaker(
        clock,
        window=5,
        minimum_calls=5,
        slow_call_seconds=10.0,
        slow_call_rate=0.6,
        consecutive_failures=99,
    )
    ok(b, 1.0), ok(b, 1.0), ok(b, 11.0), ok(b, 12.0)
    assert b.state is BreakerState.CLOSED
    ok(b, 13.0)
    assert b.state is BreakerState.OPEN


def test_half_open_admits_exactly_n_probes_and_lost_probe_cannot_wedge_it() -> None:
    clock = Clock()
    b, _ = breaker(
        clock, consecutive_failures=1, open_seconds=5, half_open_probes=2, probe_max_seconds=30
    )
    fail(b)
    clock.t += 5
    p1, p2 = b.try_acquire(), b.try_acquire()
    assert p1 is not None and p2 is not None and p1.probe and p2.probe
    assert b.try_acquire() is None
    b.release(p1)
    p3 = b.try_acquire()
    assert p3 is not None
    assert b.try_acquire() is None
    clock.t += 31
    p4 = b.try_acquire()
    assert p4 is not None and b.state is BreakerState.HALF_OPEN
    b.on_success(p4, 0.2)
    assert b.state is BreakerState.CLOSED
    # A stale probe finishing late changes nothing.
    b.on_failure(p2, "late")
    assert b.state is BreakerState.CLOSED


def test_open_to_half_open_only_after_the_wait() -> None:
    clock = Clock()
    b, seen = breaker(clock, consecutive_failures=1, open_seconds=5)
    fail(b)
    clock.t += 3
    assert b.state is BreakerState.OPEN and b.try_acquire() is None
    clock.t += 3
    p = b.try_acquire()
    assert p is not None and p.probe and b.state is BreakerState.HALF_OPEN
    assert b.snapshot().window_calls == 0
    assert seen == [("closed", "open"), ("open", "half_open")]


def test_consecutive_trip_and_growing_capped_open_wait() -> None:
    clock = Clock()
    b, _ = breaker(
        clock, consecutive_failures=5, open_seconds=30, max_open_seconds=100, minimum_calls=1000
    )
    fail(b), ok(b), fail(b), fail(b), fail(b), fail(b)
    assert b.state is BreakerState.CLOSED, "a success resets the consecutive count"
    fail(b)
    assert b.state is BreakerState.OPEN and b.trips == 1
    clock.t += 29.999
    assert b.state is BreakerState.OPEN
    clock.t += 0.002
    probe = b.try_acquire()
    assert probe is not None
    b.on_failure(probe, "still down")
    assert b.retry_at == pytest.approx(clock.t + 60), "second trip waits 2x"
    clock.t += 60
    probe = b.try_acquire()
    assert probe is not None
    b.on_failure(probe, "still down")
    assert b.retry_at == pytest.approx(clock.t + 100), "never longer than the cap"
    assert b.trips == 3


def test_rate_limit_retry_after_opens_for_exactly_that_long_and_blocks_forced_probe() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=99)
    p = b.try_acquire()
    assert p is not None
    b.on_failure(p, "PROVIDER_RATE_LIMITED", retry_after=42)
    assert b.state is BreakerState.OPEN and b.rate_limited
    assert b.try_acquire(force=True) is None
    clock.t += 42
    assert b.try_acquire() is not None


def test_forced_probe_when_every_candidate_is_open() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=1, open_seconds=60)
    fail(b)
    assert b.try_acquire() is None
    forced = b.try_acquire(force=True)
    assert forced is not None and forced.probe
    assert b.try_acquire(force=True) is None, "only one last-resort probe at a time"
    b.on_success(forced, 0.1)
    assert b.state is BreakerState.CLOSED


def test_moderation_and_cancellation_release_without_counting() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=2)
    for _ in range(5):
        p = b.try_acquire()
        assert p is not None
        b.release(p)
    snap = b.snapshot()
    assert snap.state is BreakerState.CLOSED and snap.window_calls == 0 and snap.in_flight == 0


def test_snapshot_reports_latency_percentiles_and_error_rate() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=99, minimum_calls=1000)
    for d in (0.1, 0.2, 0.3, 0.4, 1.0):
        ok(b, d)
    fail(b)
    held = b.try_acquire()
    snap = b.snapshot()
    assert snap.latency_p50 == 0.3 and snap.latency_p95 == 1.0
    assert snap.error_rate == pytest.approx(1 / 6) and snap.in_flight == 1
    assert held is not None
