"""What a settlement is made of: the Settlement order and the outbox parts it is written as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagegate.metering.v1 import metering_pb2
from imagegate.quota.v1 import quota_pb2

COMMIT = "commit"
RELEASE = "release"
RECORD = "record"


@dataclass
class Settlement:
    """How one request ends: the quota side and the ledger side."""

    reservation_id: str
    """Reservation to commit or release; empty when no reservation was made."""
    commit: quota_pb2.CommitReservationRequest | None
    """Actual usage to charge; None releases the reservation."""
    record: metering_pb2.RecordUsageRequest | None
    """Usage record for Metering; None when there is nothing to record."""


@dataclass
class Part:
    """One message to deliver, as its outbox row holds it."""

    row_id: int
    kind: str
    payload: bytes
    attempts: int = 0
    message: Any = None
    """The request itself when this process built it (saves parsing `payload` back)."""


def message_of(part: Part, cls: Any) -> Any:
    return part.message if part.message is not None else cls.FromString(part.payload)
