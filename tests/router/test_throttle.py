"""Failover budget: the exact gRPC retry-throttle table (retry_throttle_test.cc), maxTokens 4, ratio 1.6."""

from __future__ import annotations

from services.router.throttle import RetryThrottle


def test_retry_throttle_table() -> None:
    t = RetryThrottle(4, 1.6)
    table = [
        ("fail", True), ("ok", None), ("fail", True), ("fail", False), ("fail", False),
        ("fail", False), ("fail", False), ("ok", None), ("ok", None), ("fail", True),
        ("fail", False), ("ok", None), ("fail", False), ("ok", None), ("fail", True),
    ]  # fmt: skip
    for step, (event, allowed) in enumerate(table):
        if event == "ok":
            t.on_success()
        else:
            assert t.on_failure() is allowed, f"step {step}: tokens {t.tokens}"
    assert t.tokens == 2.4


def test_tokens_never_go_below_zero_or_above_max() -> None:
    t = RetryThrottle(4, 1.6)
    for _ in range(10):
        t.on_failure()
    assert t.tokens == 0 and not t.allowed()
    for _ in range(10):
        t.on_success()
    assert t.tokens == 4 and t.allowed()
