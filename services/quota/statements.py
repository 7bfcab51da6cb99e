"""The SQL the Quota hot paths run, prepared once per store, and the rows they read."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from imagegate.quota.v1 import quota_pb2

_TENANT_BY_ID = "SELECT id, name, plan, create_us FROM tenants WHERE id = ?"
_KEY_BY_ID = (
    "SELECT k.secret_hash, k.revoke_us, t.id, t.name, t.plan, t.create_us"
    " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.key_id = ?"
)
_INSERT_RES = (
    "INSERT INTO reservations (id, tenant_id, request_id, period, images, pixels, cost_micros,"
    " state, create_us, expire_us, charged_images, charged_pixels, charged_cost_micros)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)"
    " ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING id"
)
_RES_BY_REQUEST = (
    "SELECT id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros"
    " FROM reservations WHERE tenant_id = ? AND request_id = ?"
)
_RES_BY_ID = (
    "SELECT id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros FROM reservations WHERE id = ?"
)
# One statement for every plan: a limit of 0 means unlimited.
_HOLD = (
    "UPDATE quota_periods SET reserved_images = reserved_images + ?,"
    " reserved_pixels = reserved_pixels + ?, reserved_cost_micros = reserved_cost_micros + ?"
    " WHERE tenant_id = ? AND period = ?"
    " AND (? = 0 OR used_images + reserved_images + ? <= ?)"
    " AND (? = 0 OR used_pixels + reserved_pixels + ? <= ?)"
    " AND (? = 0 OR used_cost_micros + reserved_cost_micros + ? <= ?)"
)
_ENSURE_PERIOD = (
    "INSERT INTO quota_periods (tenant_id, period, used_images, reserved_images, used_pixels,"
    " reserved_pixels, used_cost_micros, reserved_cost_micros) VALUES (?, ?, 0, 0, 0, 0, 0, 0)"
    " ON CONFLICT (tenant_id, period) DO NOTHING"
)
_PERIOD_ROW = (
    "SELECT used_images, reserved_images, used_pixels, reserved_pixels, used_cost_micros,"
    " reserved_cost_micros FROM quota_periods WHERE tenant_id = ? AND period = ?"
)
# Commit of a pending reservation: one conditional UPDATE that returns the row.
_COMMIT_PENDING = (
    "UPDATE reservations SET state = ?, settle_us = ?, charged_images = ?, charged_pixels = ?,"
    " charged_cost_micros = ? WHERE id = ? AND state = ? AND images >= ?"
    " RETURNING id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros"
)
# PostgreSQL: the same commit and the charge of its units in one atomic statement.
_COMMIT_PENDING_PG = (
    "WITH r AS (UPDATE reservations SET state = ?, settle_us = ?, charged_images = ?,"
    " charged_pixels = ?, charged_cost_micros = ? WHERE id = ? AND state = ? AND images >= ?"
    " RETURNING id, tenant_id, request_id, period, images, pixels, cost_micros, state,"
    " expire_us, charged_images, charged_pixels, charged_cost_micros),"
    " p AS (UPDATE quota_periods q SET reserved_images = q.reserved_images - r.images,"
    " reserved_pixels = q.reserved_pixels - r.pixels,"
    " reserved_cost_micros = q.reserved_cost_micros - r.cost_micros,"
    " used_images = q.used_images + r.charged_images,"
    " used_pixels = q.used_pixels + r.charged_pixels,"
    " used_cost_micros = q.used_cost_micros + r.charged_cost_micros"
    " FROM r WHERE q.tenant_id = r.tenant_id AND q.period = r.period)"
    " SELECT id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros FROM r"
)
_SETTLE_FROM = (
    "UPDATE reservations SET state = ?, settle_us = ?, charged_images = ?, charged_pixels = ?,"
    " charged_cost_micros = ? WHERE id = ? AND state = ?"
)
_CHARGE = (
    "UPDATE quota_periods SET reserved_images = reserved_images - ?,"
    " reserved_pixels = reserved_pixels - ?, reserved_cost_micros = reserved_cost_micros - ?,"
    " used_images = used_images + ?, used_pixels = used_pixels + ?,"
    " used_cost_micros = used_cost_micros + ? WHERE tenant_id = ? AND period = ?"
)
_RESOLVE_PENDING = (
    "UPDATE reservations SET state = ?, settle_us = ? WHERE id = ? AND state = ?"
    " RETURNING id, tenant_id, request_id, period, images, pixels, cost_micros, state, expire_us,"
    " charged_images, charged_pixels, charged_cost_micros"
)
_RETURN_UNITS = (
    "UPDATE quota_periods SET reserved_images = reserved_images - ?,"
    " reserved_pixels = reserved_pixels - ?, reserved_cost_micros = reserved_cost_micros - ?"
    " WHERE tenant_id = ? AND period = ?"
)
_EXPIRED_ALL = (
    "SELECT id FROM reservations WHERE state = ? AND expire_us <= ? ORDER BY expire_us LIMIT 500"
)
_EXPIRED_OF_TENANT = (
    "SELECT id FROM reservations WHERE state = ? AND expire_us <= ? AND tenant_id = ?"
    " ORDER BY expire_us LIMIT 500"
)


class ResRow(NamedTuple):
    """A reservations row as the hot path reads it (the columns the statements below select)."""

    id: str
    tenant_id: str
    request_id: str
    period: str
    images: int
    pixels: int
    cost_micros: int
    state: quota_pb2.ReservationState.ValueType
    expire_us: int
    charged_images: int
    charged_pixels: int
    charged_cost_micros: int


@dataclass(frozen=True)
class Statements:
    """Every statement above in the connection's parameter style (one attribute each)."""

    tenant_by_id: str
    key_by_id: str
    insert_res: str
    res_by_request: str
    res_by_id: str
    hold: str
    ensure_period: str
    period_row: str
    commit_pending: str
    commit_pending_pg: str
    settle_from: str
    charge: str
    resolve_pending: str
    return_units: str
    expired_all: str
    expired_of_tenant: str

    @classmethod
    def prepare(cls, sql: Callable[[str], str]) -> Statements:
        """The statements rewritten by `sql` (the runner's dialect translation)."""
        return cls(
            tenant_by_id=sql(_TENANT_BY_ID),
            key_by_id=sql(_KEY_BY_ID),
            insert_res=sql(_INSERT_RES),
            res_by_request=sql(_RES_BY_REQUEST),
            res_by_id=sql(_RES_BY_ID),
            hold=sql(_HOLD),
            ensure_period=sql(_ENSURE_PERIOD),
            period_row=sql(_PERIOD_ROW),
            commit_pending=sql(_COMMIT_PENDING),
            commit_pending_pg=sql(_COMMIT_PENDING_PG),
            settle_from=sql(_SETTLE_FROM),
            charge=sql(_CHARGE),
            resolve_pending=sql(_RESOLVE_PENDING),
            return_units=sql(_RETURN_UNITS),
            expired_all=sql(_EXPIRED_ALL),
            expired_of_tenant=sql(_EXPIRED_OF_TENANT),
        )


_PLAN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def reserve_pg_sql(limits: dict[str, tuple[int, int, int]]) -> str | None:
    """PostgreSQL: find the tenant (by key id, or by tenant id), insert the reservation and hold
    its units in ONE statement; the caller verifies the key hash and rolls back on any refusal.

    The hold runs only when this statement inserted the reservation (not on a repeated
    request_id) and only within the plan's limits (a VALUES list of every plan, built once); it
    is an UPDATE of the period row, so a concurrent hold is re-checked on the newest row version
    after the row lock, exactly like the separate statement. Returns secret_hash, revoke_us,
    tenant id, name, plan, create_us, the inserted id (NULL on conflict) and whether it held.
    None when a plan id cannot be written as a literal (the generic path is used then).
    """
    if not limits or not all(_PLAN_ID_RE.match(p) for p in limits):
        return None
    plans = ", ".join(f"('{p}', {li}, {lp}, {lc})" for p, (li, lp, lc) in sorted(limits.items()))
    sql = (
        f"WITH lim (plan, li, lp, lc) AS (VALUES {plans}),"  # noqa: S608 - ids match _PLAN_ID_RE
        " w AS (SELECT k.secret_hash, k.revoke_us, t.id, t.name, t.plan, t.create_us"
        " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.key_id = ?"
        " UNION ALL SELECT NULL, NULL, t.id, t.name, t.plan, t.create_us"
        " FROM tenants t WHERE t.id = ?),"
        " ins AS (INSERT INTO reservations (id, tenant_id, request_id, period, images, pixels,"
        " cost_micros, state, create_us, expire_us, charged_images, charged_pixels,"
        " charged_cost_micros) SELECT ?, w.id, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0 FROM w"
        " WHERE (w.revoke_us IS NULL OR w.revoke_us > ?)"
        " ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING id),"
        " h AS (UPDATE quota_periods q SET reserved_images = q.reserved_images + ?,"
        " reserved_pixels = q.reserved_pixels + ?,"
        " reserved_cost_micros = q.reserved_cost_micros + ?"
        " FROM w JOIN lim ON lim.plan = w.plan"
        " WHERE q.tenant_id = w.id AND q.period = ? AND EXISTS (SELECT 1 FROM ins)"
        " AND (lim.li = 0 OR q.used_images + q.reserved_images + ? <= lim.li)"
        " AND (lim.lp = 0 OR q.used_pixels + q.reserved_pixels + ? <= lim.lp)"
        " AND (lim.lc = 0 OR q.used_cost_micros + q.reserved_cost_micros + ? <= lim.lc)"
        " RETURNING 1)"
        " SELECT w.secret_hash, w.revoke_us, w.id, w.name, w.plan, w.create_us,"
        " (SELECT id FROM ins), EXISTS (SELECT 1 FROM h) FROM w"
    )
    return sql.replace("?", "%s")
