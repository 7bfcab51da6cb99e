"""Formatting helpers for the CLI: tables, money, enum names, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

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


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def proto_dict(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping with field names as in the .proto, but 64-bit integers as numbers.

    The mapping writes int64 as strings for JavaScript's sake; a person or `jq` reading
    `cost_micros` expects a number, and Python's json has no precision limit.
    """
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _int64_as_numbers(message.DESCRIPTOR, out)
    return out


def _int64_as_numbers(desc: Any, value: dict[str, Any]) -> None:
    for field in desc.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub is None or sub.full_name.startswith("google.protobuf."):
                continue  # well-known types have their own JSON forms (Timestamp, Duration…)
            if sub.GetOptions().map_entry:
                entry = sub.fields_by_name["value"]
                if entry.type in _INT64_TYPES:
                    value[field.name] = {k: int(v) for k, v in item.items()}
                elif entry.type == FieldDescriptor.TYPE_MESSAGE and entry.message_type is not None:
                    for v in item.values():
                        _int64_as_numbers(entry.message_type, v)
                continue
            for element in item if field.is_repeated else [item]:
                _int64_as_numbers(sub, element)
        elif field.type in _INT64_TYPES:
            value[field.name] = [int(v) for v in item] if field.is_repeated else int(item)


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
