"""Quota rows as protobuf messages, and the errors that name them."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import Row

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.quota.v1 import quota_pb2
from services.quota.statements import ResRow

DOMAIN = "imagegate.quota"
PENDING = quota_pb2.RESERVATION_STATE_PENDING
COMMITTED = quota_pb2.RESERVATION_STATE_COMMITTED
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED
EXPIRED = quota_pb2.RESERVATION_STATE_EXPIRED


def pixels_of(megapixels: float) -> int:
    """Megapixels as whole pixels, the integer unit the counters use."""
    return round(megapixels * 1_000_000)


def tenant_not_found(tenant_id: str) -> ImagegateError:
    """NOT_FOUND for an unknown tenant id."""
    return ImagegateError(
        grpc.StatusCode.NOT_FOUND,
        reasons.NOT_FOUND,
        f"no tenant {tenant_id!r}",
        domain=DOMAIN,
        metadata={"tenant_id": tenant_id},
    )


def not_pending(row: ResRow, why: str) -> ImagegateError:
    """FAILED_PRECONDITION: the reservation can no longer be committed, and `why`."""
    state = quota_pb2.ReservationState.Name(row.state)
    return ImagegateError(
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.RESERVATION_NOT_PENDING,
        f"reservation {row.id} cannot be committed: {why}",
        domain=DOMAIN,
        metadata={"reservation_id": row.id, "state": state},
    )


def ts(us: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from epoch microseconds (same value as timestamp(from_us(us)))."""
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def tenant_row_pb(row: Row[Any]) -> quota_pb2.Tenant:
    """The Tenant message of a tenants row."""
    return quota_pb2.Tenant(id=row.id, name=row.name, plan=row.plan, create_time=ts(row.create_us))


def reservation_pb(row: ResRow) -> quota_pb2.Reservation:
    """The Reservation message of a reservations row."""
    return quota_pb2.Reservation(
        id=row.id,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        images=row.images,
        megapixels=row.pixels / 1_000_000,
        cost_micros=row.cost_micros,
        period=row.period,
        state=row.state,
        expire_time=ts(row.expire_us),
    )
