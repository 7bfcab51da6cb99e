"""Shared persistence kit of Quota and Metering: engines, migrations, periods, transaction runner."""

from imagegate.persistence.db import make_engine, migrate
from imagegate.persistence.periods import (
    PERIOD_RE,
    Clock,
    from_us,
    period_end,
    period_of,
    period_start,
    to_us,
    utc_now,
)
from imagegate.persistence.runner import DbRunner, Tx

__all__ = [
    "PERIOD_RE",
    "Clock",
    "DbRunner",
    "Tx",
    "from_us",
    "make_engine",
    "migrate",
    "period_end",
    "period_of",
    "period_start",
    "to_us",
    "utc_now",
]
