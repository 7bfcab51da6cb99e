"""Formatting helpers for the CLI: tables, money, enum names, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from imagegate.common.v1 import catalog_pb2
from imagegate.metering.v1 import metering_pb2
from imagegate.router.v1 import router_pb2


def usd(micros: int) -> str:
    """Micro-USD as dollars with enough digits for sub-cent prices."""
    return f"${micros / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros else "$0"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """RFC 4180 CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(headers)
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


def as_json(value: Any) -> str:
    """Indented JSON."""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def enum_name(value: int, prefix: str) -> str:
    """An enum value's name without its prefix, lower-cased: BREAKER_STATE_OPEN -> open."""
    enum: Any = {
        "QUALITY_TIER_": catalog_pb2.QualityTier,
        "REQUEST_OUTCOME_": metering_pb2.RequestOutcome,
        "BREAKER_STATE_": router_pb2.BreakerState,
    }[prefix]
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        # A newer server may send a value this client does not know yet.
        return str(value)
