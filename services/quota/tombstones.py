"""Release by (tenant, request_id): returns a pending hold, or leaves a RELEASED tombstone."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from imagegate.persistence import Tx
from imagegate.quota.v1 import quota_pb2

PENDING = quota_pb2.RESERVATION_STATE_PENDING
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED

# A reservation never holds 0 images (ReserveQuota asks for at least 1), so 0 marks a tombstone.
_TOMBSTONE = (
    "INSERT INTO reservations (id, tenant_id, request_id, period, images, pixels, cost_micros,"
    " state, create_us, expire_us, settle_us, charged_images, charged_pixels, charged_cost_micros)"
    " VALUES (?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?, 0, 0, 0)"
    " ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING id"
)
_RELEASE_PENDING = (
    "UPDATE reservations SET state = ?, settle_us = ? WHERE tenant_id = ? AND request_id = ?"
    " AND state = ? RETURNING id, tenant_id, request_id, period, images, pixels, cost_micros,"
    " state, expire_us, charged_images, charged_pixels, charged_cost_micros"
)
_RETURN_UNITS = (
    "UPDATE quota_periods SET reserved_images = reserved_images - ?,"
    " reserved_pixels = reserved_pixels - ?, reserved_cost_micros = reserved_cost_micros - ?"
    " WHERE tenant_id = ? AND period = ?"
)
_BY_REQUEST = (
    "SELECT id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros"
    " FROM reservations WHERE tenant_id = ? AND request_id = ?"
)


def is_tombstone(state: int, images: int) -> bool:
    """Whether a reservations row is a tombstone left by a release that came before its reserve."""
    return state == RELEASED and images == 0


def release_by_request(
    tx: Tx,
    sql: Callable[[str], str],
    *,
    tenant_id: str,
    request_id: str,
    period: str,
    now_us: int,
) -> tuple[Any, ...]:
    """Releases the reservation of (tenant, request_id) in the open transaction; its row after.

    The tombstone is tried first: when the insert conflicts, the reserve's row is committed
    (PostgreSQL waits for a concurrent insert), so the conditional UPDATE below sees it.
    """
    tomb = "r_" + secrets.token_hex(12)
    if tx.one(
        sql(_TOMBSTONE), (tomb, tenant_id, request_id, period, RELEASED, now_us, now_us, now_us)
    ):
        return tuple(tx.one(sql(_BY_REQUEST), (tenant_id, request_id)))
    moved = tx.one(sql(_RELEASE_PENDING), (RELEASED, now_us, tenant_id, request_id, PENDING))
    if moved is not None:
        # Columns 3-6: period, images, pixels, cost_micros.
        tx.rowcount(sql(_RETURN_UNITS), (moved[4], moved[5], moved[6], tenant_id, moved[3]))
        return tuple(moved)
    return tuple(tx.one(sql(_BY_REQUEST), (tenant_id, request_id)))
