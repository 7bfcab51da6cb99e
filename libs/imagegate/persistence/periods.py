"""UTC calendar-month periods ("YYYY-MM"), the unit quotas count in and reset on."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime; tests inject a fake one."""

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def period_of(at: datetime) -> str:
    """The calendar month of an instant, in UTC."""
    at = at.astimezone(UTC)
    return f"{at.year:04d}-{at.month:02d}"


def period_start(period: str) -> datetime:
    """First instant of a period."""
    match = PERIOD_RE.match(period)
    if not match:
        raise ValueError(f"not a period: {period!r}")
    return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)


def period_end(period: str) -> datetime:
    """First instant of the following period (when the counts start again)."""
    start = period_start(period)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def to_us(at: datetime) -> int:
    """Microseconds since the epoch."""
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """Aware UTC datetime from microseconds since the epoch."""
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
