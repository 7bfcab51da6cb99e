"""QuotaStore: every Quota operation as one short transaction run in a worker thread.

Benchmarks and tests can drive it without gRPC:

    store = QuotaStore.open(url, plans=load_plans(), clock=utc_now)
    tenant = await store.create_tenant(request_id="r1", name="acme", plan="pro")
    res = await store.reserve(ReserveArgs(request_id="q1", tenant_id=tenant.id, images=1))
    await store.commit(res.reservation.id, images=1, megapixels=1.0, cost_micros=3000)
    await store.close()

Each public coroutine makes one thread hop (`imagegate.persistence.DbRunner`: one writer thread
and connection for SQLite, a pool of threads with their own connections for PostgreSQL) and runs
one transaction; on SQLite, reserve/commit/release calls that wait together share one
BEGIN IMMEDIATE ... COMMIT with a SAVEPOINT each (group commit). `*_sync` are the same
operations for callers that already run in a thread. Hot paths run SQL strings prepared once
(reserve: 3 statements on SQLite, 1 on PostgreSQL; commit: 2 on SQLite, 1 autocommit statement
on PostgreSQL). Atomicity: the reserve is a conditional
`UPDATE quota_periods ... WHERE used + reserved + n <= limit`; PostgreSQL re-checks the condition
on the newest row version after a row lock wait (READ COMMITTED), SQLite runs every transaction
as BEGIN IMMEDIATE. Idempotency is carried by the unique (tenant_id, request_id) constraint.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import Engine, Row, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import (
    FieldViolation,
    ImagegateError,
    QuotaViolation,
    invalid_argument,
    timestamp,
)
from imagegate.persistence import DbRunner, Tx, make_engine, migrate
from imagegate.persistence.periods import Clock, period_end, period_of, to_us, utc_now
from imagegate.quota.v1 import quota_pb2
from services.quota import keys, tombstones
from services.quota.models import ApiKey, Tenant
from services.quota.plans import DEFAULT_PLAN

DOMAIN = "imagegate.quota"
PENDING = quota_pb2.RESERVATION_STATE_PENDING
COMMITTED = quota_pb2.RESERVATION_STATE_COMMITTED
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED
EXPIRED = quota_pb2.RESERVATION_STATE_EXPIRED

_T = TypeVar("_T")
_tenants: Table = cast(Table, Tenant.__table__)
_keys: Table = cast(Table, ApiKey.__table__)


def pixels_of(megapixels: float) -> int:
    """Megapixels as whole pixels, the integer unit the counters use."""
    return round(megapixels * 1_000_000)


@dataclass(frozen=True)
class ReserveArgs:
    """What ReserveQuota asks for, already validated."""

    request_id: str
    """Idempotency key, unique per tenant."""
    images: int
    """Images to hold (>= 1)."""
    tenant_id: str = ""
    """Tenant; ignored when api_key is set."""
    api_key: str = ""
    """Secret key to authenticate in the same transaction."""
    megapixels: float = 0.0
    """Megapixels to hold."""
    cost_micros: int = 0
    """Cost to hold, in micro-USD."""
    lease_seconds: float | None = None
    """Lease length; None uses the store default."""


@dataclass(frozen=True)
class ReserveResult:
    """A reservation with the tenant, plan and key it was made for."""

    reservation: quota_pb2.Reservation
    """The reservation (the existing one on a repeat)."""
    tenant: quota_pb2.Tenant
    """Its tenant."""
    plan: quota_pb2.Plan
    """The tenant's plan."""
    key_id: str = ""
    """Public id of the key when one was given."""
    created: bool = True
    """False when the request_id had been seen and nothing changed."""


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


class QuotaStore:
    """Tenants, keys, plans and reservations over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(
        self,
        engine: Engine,
        plans: dict[str, quota_pb2.Plan],
        *,
        clock: Clock = utc_now,
        pepper: str = "",
        lease_seconds: float = 300.0,
        threads: int = 8,
    ) -> None:
        self.engine = engine
        self.plans = plans
        self.clock = clock
        self.lease_seconds = lease_seconds
        self._pepper = pepper.encode()
        # SQLite: one thread and one connection for every transaction (no busy waits);
        # PostgreSQL: `threads` threads, each with its own connection.
        self._db = DbRunner(engine, threads=threads, name="quota-db")
        self._integrity_error = self._db.integrity_error
        q = self._db.sql
        self._q_tenant = q(_TENANT_BY_ID)
        self._q_key = q(_KEY_BY_ID)
        self._q_insert_res = q(_INSERT_RES)
        self._q_res_by_request = q(_RES_BY_REQUEST)
        self._q_res_by_id = q(_RES_BY_ID)
        self._q_hold = q(_HOLD)
        self._q_ensure_period = q(_ENSURE_PERIOD)
        self._q_period_row = q(_PERIOD_ROW)
        self._q_commit_pending = q(_COMMIT_PENDING)
        self._q_commit_pending_pg = q(_COMMIT_PENDING_PG)
        self._q_settle_from = q(_SETTLE_FROM)
        self._q_charge = q(_CHARGE)
        self._q_resolve_pending = q(_RESOLVE_PENDING)
        self._q_return_units = q(_RETURN_UNITS)
        self._q_expired_all = q(_EXPIRED_ALL)
        self._q_expired_tenant = q(_EXPIRED_OF_TENANT)
        # Limits per plan id, in counter units: (images, pixels, cost_micros); 0 = unlimited.
        self._limits = {
            pid: (p.monthly_images, pixels_of(p.monthly_megapixels), p.monthly_cost_micros)
            for pid, p in plans.items()
        }
        self._q_reserve_pg = None if self._db.sqlite else _reserve_pg_sql(self._limits)
        # Tenant messages by their (immutable) row tuple; bounded.
        self._tenant_cache: dict[tuple[Any, ...], quota_pb2.Tenant] = {}
        self._dummy_hash = keys.hash_key("ig_000000000000_" + "0" * 43, self._pepper)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        plans: dict[str, quota_pb2.Plan],
        schema: str = "quota",
        clock: Clock = utc_now,
        pepper: str = "",
        lease_seconds: float = 300.0,
        threads: int = 8,
    ) -> QuotaStore:
        """Creates the engine, applies the migrations and returns a ready store."""
        engine = make_engine(url, schema=schema, pool_size=threads)
        migrate(
            engine,
            script_location="services.quota:migrations",
            schema=schema,
            version_table="quota_alembic_version",
        )
        return cls(
            engine, plans, clock=clock, pepper=pepper, lease_seconds=lease_seconds, threads=threads
        )

    async def close(self) -> None:
        """Stops the worker threads and disposes of the connection pool."""
        self._db.close()
        self.engine.dispose()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._db.run(fn, *args)

    async def _run_batched(self, fn: Callable[..., _T], *args: Any) -> _T:
        # fn only touches the runner's transaction, so SQLite may group-commit it.
        return await self._db.run(fn, *args, batch=True)

    # ---- async API (one thread hop, one transaction each) ----

    async def authenticate(self, api_key: str) -> tuple[quota_pb2.Tenant, quota_pb2.Plan, str]:
        """Tenant, plan and key id of a key; UNAUTHENTICATED when unknown or revoked."""
        return await self._run_batched(self.authenticate_sync, api_key)

    async def reserve(self, args: ReserveArgs) -> ReserveResult:
        """Holds units atomically; idempotent on (tenant, request_id)."""
        return await self._run_batched(self.reserve_sync, args)

    async def commit(
        self, reservation_id: str, *, images: int, megapixels: float = 0.0, cost_micros: int = 0
    ) -> quota_pb2.Reservation:
        """Charges the actual amount and returns the rest; idempotent."""
        return await self._run_batched(
            self.commit_sync, reservation_id, images, megapixels, cost_micros
        )

    async def release(self, reservation_id: str) -> quota_pb2.Reservation:
        """Returns every unit of a pending reservation; a no-op once resolved."""
        return await self._run_batched(self.release_sync, reservation_id)

    async def get_quota(self, tenant_id: str) -> quota_pb2.QuotaStatus:
        """The tenant's counters for the current period (expired leases returned first)."""
        return await self._run(self.get_quota_sync, tenant_id)

    async def expire_leases(self) -> int:
        """Returns the units of every lease that has run out; how many expired."""
        return await self._run(self.expire_leases_sync)

    async def create_tenant(self, *, request_id: str, name: str, plan: str) -> quota_pb2.Tenant:
        """Creates a tenant; idempotent on request_id."""
        return await self._run(self.create_tenant_sync, request_id, name, plan)

    async def set_tenant_plan(self, tenant_id: str, plan: str) -> quota_pb2.Tenant:
        """Moves a tenant to another plan."""
        return await self._run(self.set_tenant_plan_sync, tenant_id, plan)

    async def create_api_key(self, tenant_id: str, label: str) -> tuple[str, str]:
        """A new key (secret, key id); only its hash is stored."""
        return await self._run(self.create_api_key_sync, tenant_id, label)

    async def revoke_api_key(self, key_id: str) -> int:
        """Revokes a key (idempotent); the revocation time in epoch microseconds."""
        return await self._run(self.revoke_api_key_sync, key_id)

    async def list_tenants(self) -> list[quota_pb2.Tenant]:
        """Every tenant, by name."""
        return await self._run(self.list_tenants_sync)

    # ---- synchronous operations ----

    def authenticate_sync(self, api_key: str) -> tuple[quota_pb2.Tenant, quota_pb2.Plan, str]:
        """See `authenticate`."""
        with self._db.tx() as tx:
            tenant_row, key_id = self._authenticate(tx, api_key)
        tenant = self._tenant_pb(tenant_row)
        return tenant, self._plan(tenant.plan), key_id

    def reserve_sync(self, args: ReserveArgs) -> ReserveResult:
        """See `reserve`."""
        try:
            return self._reserve_once(args)
        except self._integrity_error:
            # A concurrent twin with the same request_id won the insert; return its reservation.
            return self._reserve_once(args)

    def _reserve_once(self, args: ReserveArgs) -> ReserveResult:
        now = self.clock()
        now_us = to_us(now)
        lease = self.lease_seconds if args.lease_seconds is None else args.lease_seconds
        pixels = pixels_of(args.megapixels)
        period = period_of(now)
        expire_us = now_us + int(lease * 1_000_000)
        reservation_id = "r_" + secrets.token_hex(12)
        values = (
            reservation_id,
            args.request_id,
            period,
            args.images,
            pixels,
            args.cost_micros,
            PENDING,
            now_us,
            expire_us,
        )
        with self._db.tx() as tx:
            key_id = ""
            held = False
            if self._q_reserve_pg is not None:
                # PostgreSQL: look-up, insert and hold in one statement (see _reserve_pg_sql).
                who = args.api_key and keys.key_id_of(args.api_key)
                got = tx.one(
                    self._q_reserve_pg,
                    (
                        who or "",
                        "" if args.api_key else args.tenant_id,
                        *values,
                        args.images,
                        pixels,
                        args.cost_micros,
                        period,
                        args.images,
                        pixels,
                        args.cost_micros,
                    ),
                )
                if args.api_key:
                    tenant_row, key_id = self._check_key(args.api_key, who or None, got)
                elif got is None:
                    raise _tenant_not_found(args.tenant_id)
                else:
                    tenant_row = got[2:6]
                inserted = None if got is None or got[6] is None else (got[6],)
                held = bool(got and got[7])
            elif args.api_key:
                tenant_row, key_id = self._authenticate(tx, args.api_key)
            else:
                tenant_row = tx.one(self._q_tenant, (args.tenant_id,))
                if tenant_row is None:
                    raise _tenant_not_found(args.tenant_id)
            tenant = self._tenant_pb(tenant_row)
            tenant_id = tenant_row[0]
            plan = self._plan(tenant_row[2])
            if self._q_reserve_pg is None:
                inserted = tx.one(self._q_insert_res, (values[0], tenant_id, *values[1:]))
            if inserted is None:
                row = ResRow(*tx.one(self._q_res_by_request, (tenant_id, args.request_id)))
                if (row.images, row.pixels, row.cost_micros) != (
                    args.images,
                    pixels,
                    args.cost_micros,
                ) and not tombstones.is_tombstone(row.state, row.images):
                    raise ImagegateError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        reasons.IDEMPOTENCY_KEY_REUSED,
                        f"request_id {args.request_id!r} was already used for a different"
                        " reservation",
                        domain=DOMAIN,
                        metadata={"request_id": args.request_id, "reservation_id": row.id},
                    )
                return ReserveResult(
                    _reservation_pb(row), tenant, plan, key_id=key_id, created=False
                )
            hold = self._hold_params(tenant_id, period, plan.id, args.images, pixels, args)
            if not held and not self._hold_or_retry(tx, tenant_id, period, hold, now_us):
                raise self._exhausted(tx, tenant, plan, period, args, pixels)
        reservation = quota_pb2.Reservation(
            id=reservation_id,
            tenant_id=tenant_id,
            request_id=args.request_id,
            images=args.images,
            megapixels=pixels / 1_000_000,
            cost_micros=args.cost_micros,
            period=period,
            state=PENDING,
            expire_time=_ts(expire_us),
        )
        return ReserveResult(reservation, tenant, plan, key_id=key_id)

    def _hold_params(
        self, tenant_id: str, period: str, plan_id: str, images: int, pixels: int, args: ReserveArgs
    ) -> tuple[Any, ...]:
        lim_images, lim_pixels, lim_cost = self._limits[plan_id]
        cost = args.cost_micros
        return (
            images,
            pixels,
            cost,
            tenant_id,
            period,
            lim_images,
            images,
            lim_images,
            lim_pixels,
            pixels,
            lim_pixels,
            lim_cost,
            cost,
            lim_cost,
        )

    def _hold_or_retry(
        self, tx: Tx, tenant_id: str, period: str, hold: tuple[Any, ...], now_us: int
    ) -> bool:
        if tx.rowcount(self._q_hold, hold) == 1:
            return True
        # First reservation of the month: create the period row, then try again.
        tx.rowcount(self._q_ensure_period, (tenant_id, period))
        if tx.rowcount(self._q_hold, hold) == 1:
            return True
        # Leases that ran out but were not swept yet must not refuse this request.
        return bool(self._expire(tx, now_us, tenant_id=tenant_id)) and (
            tx.rowcount(self._q_hold, hold) == 1
        )

    def _exhausted(
        self,
        tx: Tx,
        tenant: quota_pb2.Tenant,
        plan: quota_pb2.Plan,
        period: str,
        args: ReserveArgs,
        pixels: int,
    ) -> ImagegateError:
        used_images, reserved_images, used_pixels, reserved_pixels, used_cost, reserved_cost = (
            tx.one(self._q_period_row, (tenant.id, period))
        )
        reset = period_end(period)
        reset_text = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        checks = [
            ("images", plan.monthly_images, used_images, reserved_images, args.images),
            (
                "megapixels",
                pixels_of(plan.monthly_megapixels),
                used_pixels,
                reserved_pixels,
                pixels,
            ),
            ("cost_micros", plan.monthly_cost_micros, used_cost, reserved_cost, args.cost_micros),
        ]
        name, *numbers = next(
            (c for c in checks if c[1] > 0 and c[2] + c[3] + c[4] > c[1]), checks[0]
        )
        # Megapixels are counted in whole pixels; show them in the unit the plan uses.
        scale = 1e6 if name == "megapixels" else 1
        limit, used, reserved, asked = (f"{n / scale:g}" if scale != 1 else str(n) for n in numbers)
        return ImagegateError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            reasons.QUOTA_EXCEEDED,
            f"monthly {name} quota of plan {plan.id!r} exhausted for period {period}: "
            f"{used} used + {reserved} reserved + {asked} requested > {limit}; "
            f"resets at {reset_text}",
            domain=DOMAIN,
            metadata={
                "tenant_id": tenant.id,
                "plan": plan.id,
                "period": period,
                "limit_name": name,
                "limit": limit,
                "used": used,
                "reserved": reserved,
                "requested": asked,
                "reset_time": reset_text,
            },
            quota_violations=[
                QuotaViolation(
                    subject=f"tenant:{tenant.id}",
                    description=f"monthly {name} limit {limit} of plan {plan.id} reached;"
                    f" resets at {reset_text}",
                )
            ],
        )

    def commit_sync(
        self, reservation_id: str, images: int, megapixels: float, cost_micros: int
    ) -> quota_pb2.Reservation:
        """See `commit`."""
        pixels = pixels_of(megapixels)
        now_us = to_us(self.clock())
        fast = (COMMITTED, now_us, images, pixels, cost_micros, reservation_id, PENDING, images)
        if not self._db.sqlite:
            # Fast path on PostgreSQL: commit and charge in one statement, one round trip.
            with self._db.one_shot() as shot:
                done = shot.one(self._q_commit_pending_pg, fast)
            if done is not None:
                return _reservation_pb(ResRow(*done))
        with self._db.tx() as tx:
            # Fast path: a pending reservation within its hold; one UPDATE returns the row.
            done = tx.one(self._q_commit_pending, fast) if self._db.sqlite else None
            if done is not None:
                row = ResRow(*done)
                self._charge(tx, row, held=True, images=images, pixels=pixels, cost=cost_micros)
                return _reservation_pb(row)
            for _ in range(3):
                row = self._reservation_row(tx, reservation_id)
                if row.state == COMMITTED:
                    if (row.charged_images, row.charged_pixels, row.charged_cost_micros) == (
                        images,
                        pixels,
                        cost_micros,
                    ):
                        return _reservation_pb(row)
                    raise _not_pending(row, "it was already committed with other amounts")
                if row.state == RELEASED:
                    raise _not_pending(row, "it was released")
                if images > row.images:
                    raise ImagegateError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        reasons.COMMIT_EXCEEDS_RESERVATION,
                        f"cannot commit {images} images: reservation {row.id} holds {row.images}",
                        domain=DOMAIN,
                        metadata={
                            "reservation_id": row.id,
                            "reserved_images": str(row.images),
                            "images": str(images),
                        },
                        field_violations=[
                            FieldViolation("images", f"at most {row.images} (the reserved amount)")
                        ],
                    )
                moved = tx.rowcount(
                    self._q_settle_from,
                    (COMMITTED, now_us, images, pixels, cost_micros, row.id, row.state),
                )
                if moved != 1:
                    continue  # resolved concurrently; look again
                # An expired lease already gave its units back; the work was done, so charge it.
                self._charge(
                    tx,
                    row,
                    held=row.state == PENDING,
                    images=images,
                    pixels=pixels,
                    cost=cost_micros,
                )
                return _reservation_pb(
                    row._replace(
                        state=COMMITTED,
                        charged_images=images,
                        charged_pixels=pixels,
                        charged_cost_micros=cost_micros,
                    )
                )
        raise RuntimeError("reservation kept changing under commit")

    def _charge(
        self, tx: Tx, row: ResRow, *, held: bool, images: int, pixels: int, cost: int
    ) -> None:
        tx.rowcount(
            self._q_charge,
            (
                row.images if held else 0,
                row.pixels if held else 0,
                row.cost_micros if held else 0,
                images,
                pixels,
                cost,
                row.tenant_id,
                row.period,
            ),
        )

    def release_sync(self, reservation_id: str) -> quota_pb2.Reservation:
        """See `release`."""
        now_us = to_us(self.clock())
        with self._db.tx() as tx:
            moved = self._resolve_pending(tx, reservation_id, RELEASED, now_us)
            if moved is not None:
                return _reservation_pb(moved)
            return _reservation_pb(self._reservation_row(tx, reservation_id))

    def get_quota_sync(self, tenant_id: str) -> quota_pb2.QuotaStatus:
        """See `get_quota`."""
        now = self.clock()
        period = period_of(now)
        with self._db.tx() as tx:
            tenant_row = tx.one(self._q_tenant, (tenant_id,))
            if tenant_row is None:
                raise _tenant_not_found(tenant_id)
            self._expire(tx, to_us(now), tenant_id=tenant_id)
            row = tx.one(self._q_period_row, (tenant_id, period))
        tenant = self._tenant_pb(tenant_row)
        plan = self._plan(tenant.plan)
        used = row[0] if row else 0
        reserved = row[1] if row else 0
        return quota_pb2.QuotaStatus(
            tenant=tenant,
            plan=plan,
            period=period,
            used_images=used,
            reserved_images=reserved,
            remaining_images=-1
            if plan.monthly_images == 0
            else max(0, plan.monthly_images - used - reserved),
            used_megapixels=(row[2] if row else 0) / 1_000_000,
            used_cost_micros=row[4] if row else 0,
            reset_time=timestamp(period_end(period)),
        )

    def expire_leases_sync(self) -> int:
        """See `expire_leases`."""
        with self._db.tx() as tx:
            return self._expire(tx, to_us(self.clock()), tenant_id=None)

    def _expire(self, tx: Tx, now_us: int, *, tenant_id: str | None) -> int:
        if tenant_id is None:
            ids = tx.all(self._q_expired_all, (PENDING, now_us))
        else:
            ids = tx.all(self._q_expired_tenant, (PENDING, now_us, tenant_id))
        return sum(self._resolve_pending(tx, rid, EXPIRED, now_us) is not None for (rid,) in ids)

    def _resolve_pending(
        self, tx: Tx, reservation_id: str, state: int, now_us: int
    ) -> ResRow | None:
        """Moves a pending reservation to `state` and returns its units; None if not pending."""
        done = tx.one(self._q_resolve_pending, (state, now_us, reservation_id, PENDING))
        if done is None:
            return None
        row = ResRow(*done)
        tx.rowcount(
            self._q_return_units,
            (row.images, row.pixels, row.cost_micros, row.tenant_id, row.period),
        )
        return row

    def create_tenant_sync(self, request_id: str, name: str, plan: str) -> quota_pb2.Tenant:
        """See `create_tenant`."""
        plan = plan or DEFAULT_PLAN
        self._plan(plan, field="plan")
        for attempt in range(2):
            try:
                return self._create_tenant_once(request_id, name, plan)
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _create_tenant_once(self, request_id: str, name: str, plan: str) -> quota_pb2.Tenant:
        with self.engine.begin() as conn:
            if request_id:
                row = conn.execute(
                    select(_tenants).where(_tenants.c.request_id == request_id)
                ).first()
                if row is not None:
                    if (row.name, row.plan) != (name, plan):
                        raise ImagegateError(
                            grpc.StatusCode.ALREADY_EXISTS,
                            reasons.IDEMPOTENCY_KEY_REUSED,
                            f"request_id {request_id!r} already created another tenant",
                            domain=DOMAIN,
                            metadata={"request_id": request_id, "tenant_id": row.id},
                        )
                    return _tenant_row_pb(row)
            if conn.execute(select(_tenants.c.id).where(_tenants.c.name == name)).first():
                raise ImagegateError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    reasons.ALREADY_EXISTS,
                    f"a tenant named {name!r} already exists",
                    domain=DOMAIN,
                    metadata={"name": name},
                )
            tenant_id = "t_" + secrets.token_hex(8)
            conn.execute(
                insert(_tenants).values(
                    id=tenant_id,
                    name=name,
                    plan=plan,
                    request_id=request_id or None,
                    create_us=to_us(self.clock()),
                )
            )
            return _tenant_row_pb(
                conn.execute(select(_tenants).where(_tenants.c.id == tenant_id)).one()
            )

    def set_tenant_plan_sync(self, tenant_id: str, plan: str) -> quota_pb2.Tenant:
        """See `set_tenant_plan`."""
        self._plan(plan, field="plan")
        with self.engine.begin() as conn:
            if (
                conn.execute(
                    update(_tenants).where(_tenants.c.id == tenant_id).values(plan=plan)
                ).rowcount
                != 1
            ):
                raise _tenant_not_found(tenant_id)
            return _tenant_row_pb(
                conn.execute(select(_tenants).where(_tenants.c.id == tenant_id)).one()
            )

    def create_api_key_sync(self, tenant_id: str, label: str) -> tuple[str, str]:
        """See `create_api_key`."""
        api_key, key_id = keys.new_key()
        with self.engine.begin() as conn:
            if (
                conn.execute(select(_tenants.c.id).where(_tenants.c.id == tenant_id)).first()
                is None
            ):
                raise _tenant_not_found(tenant_id)
            conn.execute(
                insert(_keys).values(
                    key_id=key_id,
                    tenant_id=tenant_id,
                    secret_hash=keys.hash_key(api_key, self._pepper),
                    label=label,
                    create_us=to_us(self.clock()),
                )
            )
        return api_key, key_id

    def revoke_api_key_sync(self, key_id: str) -> int:
        """See `revoke_api_key`."""
        now_us = to_us(self.clock())
        with self.engine.begin() as conn:
            conn.execute(
                update(_keys)
                .where(_keys.c.key_id == key_id, _keys.c.revoke_us.is_(None))
                .values(revoke_us=now_us)
            )
            revoked = conn.execute(
                select(_keys.c.revoke_us).where(_keys.c.key_id == key_id)
            ).scalar_one_or_none()
        if revoked is None:
            raise ImagegateError(
                grpc.StatusCode.NOT_FOUND,
                reasons.NOT_FOUND,
                f"no API key {key_id!r}",
                domain=DOMAIN,
                metadata={"key_id": key_id},
            )
        return int(revoked)

    def list_tenants_sync(self) -> list[quota_pb2.Tenant]:
        """See `list_tenants`."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(_tenants).order_by(_tenants.c.name)).all()
        return [_tenant_row_pb(r) for r in rows]

    # ---- helpers ----

    def _authenticate(self, tx: Tx, api_key: str) -> tuple[tuple[Any, ...], str]:
        """(tenant row (id, name, plan, create_us), key id) of a key, in the open transaction."""
        key_id = keys.key_id_of(api_key)
        row = None
        if key_id is not None:
            row = tx.one(self._q_key, (key_id,))
        return self._check_key(api_key, key_id, row)

    def _check_key(
        self, api_key: str, key_id: str | None, row: tuple[Any, ...] | None
    ) -> tuple[tuple[Any, ...], str]:
        """Verifies a presented key against its row (secret_hash, revoke_us, tenant columns)."""
        # Hash even when the prefix is unknown so timing does not reveal which prefixes exist.
        stored = row[0] if row is not None else self._dummy_hash
        if not keys.matches(api_key, stored, self._pepper) or row is None or key_id is None:
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_INVALID,
                "the API key is not valid",
                domain=DOMAIN,
            )
        if row[1] is not None:
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_REVOKED,
                f"API key {key_id} was revoked",
                domain=DOMAIN,
                metadata={"key_id": key_id},
            )
        return row[2:6], key_id

    def _tenant_pb(self, row: tuple[Any, ...]) -> quota_pb2.Tenant:
        """The Tenant message of a (id, name, plan, create_us) row, built once per row value."""
        cached = self._tenant_cache.get(row)
        if cached is None:
            if len(self._tenant_cache) >= 10_000:
                self._tenant_cache.clear()
            cached = quota_pb2.Tenant(id=row[0], name=row[1], plan=row[2], create_time=_ts(row[3]))
            self._tenant_cache[row] = cached
        return cached

    def _plan(self, plan_id: str, *, field: str = "") -> quota_pb2.Plan:
        plan = self.plans.get(plan_id)
        if plan is None:
            if field:
                raise invalid_argument(
                    [FieldViolation(field, f"unknown plan; one of {sorted(self.plans)}")],
                    domain=DOMAIN,
                )
            raise ImagegateError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.NOT_FOUND,
                f"the tenant's plan {plan_id!r} is not configured",
                domain=DOMAIN,
                metadata={"plan": plan_id},
            )
        return plan

    def _reservation_row(self, tx: Tx, reservation_id: str) -> ResRow:
        row = tx.one(self._q_res_by_id, (reservation_id,))
        if row is None:
            raise ImagegateError(
                grpc.StatusCode.NOT_FOUND,
                reasons.NOT_FOUND,
                f"no reservation {reservation_id!r}",
                domain=DOMAIN,
                metadata={"reservation_id": reservation_id},
            )
        return ResRow(*row)

    # ---- release by request id (services/quota/tombstones.py) ----

    async def release_by_request(
        self, request_id: str, *, tenant_id: str = "", api_key: str = ""
    ) -> quota_pb2.Reservation:
        """Releases the reservation of (tenant, request_id), or leaves a RELEASED tombstone so
        a later reserve of that request_id holds nothing; the tenant is the key's when given."""
        return await self._run_batched(self.release_by_request_sync, request_id, tenant_id, api_key)

    def release_by_request_sync(
        self, request_id: str, tenant_id: str, api_key: str
    ) -> quota_pb2.Reservation:
        """See `release_by_request`."""
        now = self.clock()
        with self._db.tx() as tx:
            if api_key:
                tenant_id = self._authenticate(tx, api_key)[0][0]
            elif tx.one(self._q_tenant, (tenant_id,)) is None:
                raise _tenant_not_found(tenant_id)
            row = tombstones.release_by_request(
                tx,
                self._db.sql,
                tenant_id=tenant_id,
                request_id=request_id,
                period=period_of(now),
                now_us=to_us(now),
            )
        return _reservation_pb(ResRow(*row))


_PLAN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def _reserve_pg_sql(limits: dict[str, tuple[int, int, int]]) -> str | None:
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
        " WHERE w.revoke_us IS NULL ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING id),"
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


def _tenant_not_found(tenant_id: str) -> ImagegateError:
    return ImagegateError(
        grpc.StatusCode.NOT_FOUND,
        reasons.NOT_FOUND,
        f"no tenant {tenant_id!r}",
        domain=DOMAIN,
        metadata={"tenant_id": tenant_id},
    )


def _not_pending(row: ResRow, why: str) -> ImagegateError:
    state = quota_pb2.ReservationState.Name(row.state)
    return ImagegateError(
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.RESERVATION_NOT_PENDING,
        f"reservation {row.id} cannot be committed: {why}",
        domain=DOMAIN,
        metadata={"reservation_id": row.id, "state": state},
    )


def _ts(us: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from epoch microseconds (same value as timestamp(from_us(us)))."""
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def _tenant_row_pb(row: Row[Any]) -> quota_pb2.Tenant:
    return quota_pb2.Tenant(id=row.id, name=row.name, plan=row.plan, create_time=_ts(row.create_us))


def _reservation_pb(row: ResRow) -> quota_pb2.Reservation:
    return quota_pb2.Reservation(
        id=row.id,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        images=row.images,
        megapixels=row.pixels / 1_000_000,
        cost_micros=row.cost_micros,
        period=row.period,
        state=row.state,
        expire_time=_ts(row.expire_us),
    )
