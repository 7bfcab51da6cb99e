"""QuotaStore: every Quota operation as one short transaction run in a worker thread.

Benchmarks and tests can drive it without gRPC:

    store = QuotaStore.open(url, plans=load_plans(), clock=utc_now)
    tenant = await store.create_tenant(request_id="r1", name="acme", plan="pro")
    res = await store.reserve(ReserveArgs(request_id="q1", tenant_id=tenant.id, images=1))
    await store.commit(res.reservation.id, images=1, megapixels=1.0, cost_micros=3000)
    await store.close()

Each public coroutine makes one thread hop and runs one transaction (`*_sync` are the same
operations for callers that already run in a thread). Atomicity: the reserve is a conditional
`UPDATE quota_periods ... WHERE used + reserved + n <= limit`; PostgreSQL re-checks the condition
on the newest row version after a row lock wait (READ COMMITTED), SQLite runs every transaction
as BEGIN IMMEDIATE. Idempotency is carried by the unique (tenant_id, request_id) constraint.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from sqlalchemy import Connection, Engine, Row, Table, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import (
    FieldViolation,
    ImagegateError,
    QuotaViolation,
    invalid_argument,
    timestamp,
)
from imagegate.quota.v1 import quota_pb2
from services.quota import keys
from services.quota.db import make_engine, migrate
from services.quota.models import ApiKey, QuotaPeriod, Reservation, Tenant
from services.quota.periods import Clock, from_us, period_end, period_of, to_us, utc_now
from services.quota.plans import DEFAULT_PLAN

DOMAIN = "imagegate.quota"
PENDING = quota_pb2.RESERVATION_STATE_PENDING
COMMITTED = quota_pb2.RESERVATION_STATE_COMMITTED
RELEASED = quota_pb2.RESERVATION_STATE_RELEASED
EXPIRED = quota_pb2.RESERVATION_STATE_EXPIRED

_T = TypeVar("_T")
_tenants: Table = cast(Table, Tenant.__table__)
_keys: Table = cast(Table, ApiKey.__table__)
_periods: Table = cast(Table, QuotaPeriod.__table__)
_res: Table = cast(Table, Reservation.__table__)
_SWEEP_BATCH = 500


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
        # SQLite has one writer at a time: one thread avoids lock waits inside this process.
        workers = 1 if engine.dialect.name == "sqlite" else threads
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quota-db")
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
        self._executor.shutdown(wait=True)
        self.engine.dispose()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: ctx.run(fn, *args)
        )

    # ---- async API (one thread hop, one transaction each) ----

    async def authenticate(self, api_key: str) -> tuple[quota_pb2.Tenant, quota_pb2.Plan, str]:
        """Tenant, plan and key id of a key; UNAUTHENTICATED when unknown or revoked."""
        return await self._run(self.authenticate_sync, api_key)

    async def reserve(self, args: ReserveArgs) -> ReserveResult:
        """Holds units atomically; idempotent on (tenant, request_id)."""
        return await self._run(self.reserve_sync, args)

    async def commit(
        self, reservation_id: str, *, images: int, megapixels: float = 0.0, cost_micros: int = 0
    ) -> quota_pb2.Reservation:
        """Charges the actual amount and returns the rest; idempotent."""
        return await self._run(self.commit_sync, reservation_id, images, megapixels, cost_micros)

    async def release(self, reservation_id: str) -> quota_pb2.Reservation:
        """Returns every unit of a pending reservation; a no-op once resolved."""
        return await self._run(self.release_sync, reservation_id)

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
        with self.engine.begin() as conn:
            tenant_row, key_id = self._authenticate(conn, api_key)
        tenant = _tenant_pb(tenant_row)
        return tenant, self._plan(tenant.plan), key_id

    def reserve_sync(self, args: ReserveArgs) -> ReserveResult:
        """See `reserve`."""
        try:
            return self._reserve_once(args)
        except IntegrityError:
            # A concurrent twin with the same request_id won the insert; return its reservation.
            return self._reserve_once(args)

    def _reserve_once(self, args: ReserveArgs) -> ReserveResult:
        now = self.clock()
        now_us = to_us(now)
        lease = self.lease_seconds if args.lease_seconds is None else args.lease_seconds
        pixels = pixels_of(args.megapixels)
        with self.engine.begin() as conn:
            key_id = ""
            tenant_row: Row[Any] | None
            if args.api_key:
                tenant_row, key_id = self._authenticate(conn, args.api_key)
            else:
                tenant_row = conn.execute(
                    select(_tenants).where(_tenants.c.id == args.tenant_id)
                ).first()
                if tenant_row is None:
                    raise _tenant_not_found(args.tenant_id)
            tenant = _tenant_pb(tenant_row)
            plan = self._plan(tenant.plan)
            period = period_of(now)
            reservation_id = "r_" + secrets.token_hex(12)
            expire_us = now_us + int(lease * 1_000_000)
            inserted = conn.execute(
                _insert(conn)(_res)
                .values(
                    id=reservation_id,
                    tenant_id=tenant.id,
                    request_id=args.request_id,
                    period=period,
                    images=args.images,
                    pixels=pixels,
                    cost_micros=args.cost_micros,
                    state=PENDING,
                    create_us=now_us,
                    expire_us=expire_us,
                )
                .on_conflict_do_nothing(index_elements=["tenant_id", "request_id"])
                .returning(_res.c.id)
            ).scalar_one_or_none()
            if inserted is None:
                row = conn.execute(
                    select(_res).where(
                        _res.c.tenant_id == tenant.id, _res.c.request_id == args.request_id
                    )
                ).one()
                if (row.images, row.pixels, row.cost_micros) != (
                    args.images,
                    pixels,
                    args.cost_micros,
                ):
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
            if not self._hold_or_retry(conn, tenant.id, period, plan, pixels, args, now_us):
                raise self._exhausted(conn, tenant, plan, period, args, pixels)
        reservation = quota_pb2.Reservation(
            id=reservation_id,
            tenant_id=tenant.id,
            request_id=args.request_id,
            images=args.images,
            megapixels=pixels / 1_000_000,
            cost_micros=args.cost_micros,
            period=period,
            state=PENDING,
            expire_time=timestamp(from_us(expire_us)),
        )
        return ReserveResult(reservation, tenant, plan, key_id=key_id)

    def _hold_or_retry(
        self,
        conn: Connection,
        tenant_id: str,
        period: str,
        plan: quota_pb2.Plan,
        pixels: int,
        args: ReserveArgs,
        now_us: int,
    ) -> bool:
        if self._hold(conn, tenant_id, period, plan, args.images, pixels, args):
            return True
        # First reservation of the month: create the period row, then try again.
        self._ensure_period(conn, tenant_id, period)
        if self._hold(conn, tenant_id, period, plan, args.images, pixels, args):
            return True
        # Leases that ran out but were not swept yet must not refuse this request.
        return bool(self._expire(conn, now_us, tenant_id=tenant_id)) and self._hold(
            conn, tenant_id, period, plan, args.images, pixels, args
        )

    def _hold(
        self,
        conn: Connection,
        tenant_id: str,
        period: str,
        plan: quota_pb2.Plan,
        images: int,
        pixels: int,
        args: ReserveArgs,
    ) -> bool:
        c = _periods.c
        conditions = [c.tenant_id == tenant_id, c.period == period]
        if plan.monthly_images > 0:
            conditions.append(c.used_images + c.reserved_images + images <= plan.monthly_images)
        if plan.monthly_megapixels > 0:
            limit = pixels_of(plan.monthly_megapixels)
            conditions.append(c.used_pixels + c.reserved_pixels + pixels <= limit)
        if plan.monthly_cost_micros > 0:
            conditions.append(
                c.used_cost_micros + c.reserved_cost_micros + args.cost_micros
                <= plan.monthly_cost_micros
            )
        result = conn.execute(
            update(_periods)
            .where(*conditions)
            .values(
                reserved_images=c.reserved_images + images,
                reserved_pixels=c.reserved_pixels + pixels,
                reserved_cost_micros=c.reserved_cost_micros + args.cost_micros,
            )
        )
        return result.rowcount == 1

    def _ensure_period(self, conn: Connection, tenant_id: str, period: str) -> None:
        conn.execute(
            _insert(conn)(_periods)
            .values(tenant_id=tenant_id, period=period)
            .on_conflict_do_nothing(index_elements=["tenant_id", "period"])
        )

    def _exhausted(
        self,
        conn: Connection,
        tenant: quota_pb2.Tenant,
        plan: quota_pb2.Plan,
        period: str,
        args: ReserveArgs,
        pixels: int,
    ) -> ImagegateError:
        row = conn.execute(
            select(_periods).where(_periods.c.tenant_id == tenant.id, _periods.c.period == period)
        ).one()
        reset = period_end(period)
        reset_text = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        checks = [
            ("images", plan.monthly_images, row.used_images, row.reserved_images, args.images),
            (
                "megapixels",
                pixels_of(plan.monthly_megapixels),
                row.used_pixels,
                row.reserved_pixels,
                pixels,
            ),
            (
                "cost_micros",
                plan.monthly_cost_micros,
                row.used_cost_micros,
                row.reserved_cost_micros,
                args.cost_micros,
            ),
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
        with self.engine.begin() as conn:
            for _ in range(3):
                row = self._reservation_row(conn, reservation_id)
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
                moved = conn.execute(
                    update(_res)
                    .where(_res.c.id == row.id, _res.c.state == row.state)
                    .values(
                        state=COMMITTED,
                        settle_us=now_us,
                        charged_images=images,
                        charged_pixels=pixels,
                        charged_cost_micros=cost_micros,
                    )
                ).rowcount
                if moved != 1:
                    continue  # resolved concurrently; look again
                c = _periods.c
                held = row.state == PENDING
                # An expired lease already gave its units back; the work was done, so charge it.
                conn.execute(
                    update(_periods)
                    .where(c.tenant_id == row.tenant_id, c.period == row.period)
                    .values(
                        reserved_images=c.reserved_images - (row.images if held else 0),
                        reserved_pixels=c.reserved_pixels - (row.pixels if held else 0),
                        reserved_cost_micros=c.reserved_cost_micros
                        - (row.cost_micros if held else 0),
                        used_images=c.used_images + images,
                        used_pixels=c.used_pixels + pixels,
                        used_cost_micros=c.used_cost_micros + cost_micros,
                    )
                )
                return _reservation_pb(self._reservation_row(conn, reservation_id))
        raise RuntimeError("reservation kept changing under commit")

    def release_sync(self, reservation_id: str) -> quota_pb2.Reservation:
        """See `release`."""
        now_us = to_us(self.clock())
        with self.engine.begin() as conn:
            row = self._reservation_row(conn, reservation_id)
            if row.state == PENDING:
                self._return_units(conn, row, RELEASED, now_us)
                row = self._reservation_row(conn, reservation_id)
            return _reservation_pb(row)

    def get_quota_sync(self, tenant_id: str) -> quota_pb2.QuotaStatus:
        """See `get_quota`."""
        now = self.clock()
        period = period_of(now)
        with self.engine.begin() as conn:
            tenant_row = conn.execute(select(_tenants).where(_tenants.c.id == tenant_id)).first()
            if tenant_row is None:
                raise _tenant_not_found(tenant_id)
            self._expire(conn, to_us(now), tenant_id=tenant_id)
            row = conn.execute(
                select(_periods).where(
                    _periods.c.tenant_id == tenant_id, _periods.c.period == period
                )
            ).first()
        tenant = _tenant_pb(tenant_row)
        plan = self._plan(tenant.plan)
        used = row.used_images if row else 0
        reserved = row.reserved_images if row else 0
        return quota_pb2.QuotaStatus(
            tenant=tenant,
            plan=plan,
            period=period,
            used_images=used,
            reserved_images=reserved,
            remaining_images=-1
            if plan.monthly_images == 0
            else max(0, plan.monthly_images - used - reserved),
            used_megapixels=(row.used_pixels if row else 0) / 1_000_000,
            used_cost_micros=row.used_cost_micros if row else 0,
            reset_time=timestamp(period_end(period)),
        )

    def expire_leases_sync(self) -> int:
        """See `expire_leases`."""
        with self.engine.begin() as conn:
            return self._expire(conn, to_us(self.clock()), tenant_id=None)

    def _expire(self, conn: Connection, now_us: int, *, tenant_id: str | None) -> int:
        query = select(_res).where(_res.c.state == PENDING, _res.c.expire_us <= now_us)
        if tenant_id is not None:
            query = query.where(_res.c.tenant_id == tenant_id)
        count = 0
        for row in conn.execute(query.limit(_SWEEP_BATCH)).all():
            count += self._return_units(conn, row, EXPIRED, now_us)
        return count

    def _return_units(self, conn: Connection, row: Row[Any], state: int, now_us: int) -> int:
        moved = conn.execute(
            update(_res)
            .where(_res.c.id == row.id, _res.c.state == PENDING)
            .values(state=state, settle_us=now_us)
        ).rowcount
        if moved != 1:
            return 0
        c = _periods.c
        conn.execute(
            update(_periods)
            .where(c.tenant_id == row.tenant_id, c.period == row.period)
            .values(
                reserved_images=c.reserved_images - row.images,
                reserved_pixels=c.reserved_pixels - row.pixels,
                reserved_cost_micros=c.reserved_cost_micros - row.cost_micros,
            )
        )
        return 1

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
                    return _tenant_pb(row)
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
            return _tenant_pb(
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
            return _tenant_pb(
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
        return [_tenant_pb(r) for r in rows]

    # ---- helpers ----

    def _authenticate(self, conn: Connection, api_key: str) -> tuple[Row[Any], str]:
        key_id = keys.key_id_of(api_key)
        row = None
        if key_id is not None:
            row = conn.execute(
                select(_keys.c.secret_hash, _keys.c.revoke_us, _tenants)
                .join(_tenants, _tenants.c.id == _keys.c.tenant_id)
                .where(_keys.c.key_id == key_id)
            ).first()
        # Hash even when the prefix is unknown so timing does not reveal which prefixes exist.
        stored = row.secret_hash if row is not None else self._dummy_hash
        if not keys.matches(api_key, stored, self._pepper) or row is None or key_id is None:
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_INVALID,
                "the API key is not valid",
                domain=DOMAIN,
            )
        if row.revoke_us is not None:
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_REVOKED,
                f"API key {key_id} was revoked",
                domain=DOMAIN,
                metadata={"key_id": key_id},
            )
        return row, key_id

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

    def _reservation_row(self, conn: Connection, reservation_id: str) -> Row[Any]:
        row = conn.execute(select(_res).where(_res.c.id == reservation_id)).first()
        if row is None:
            raise ImagegateError(
                grpc.StatusCode.NOT_FOUND,
                reasons.NOT_FOUND,
                f"no reservation {reservation_id!r}",
                domain=DOMAIN,
                metadata={"reservation_id": reservation_id},
            )
        return row


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _tenant_not_found(tenant_id: str) -> ImagegateError:
    return ImagegateError(
        grpc.StatusCode.NOT_FOUND,
        reasons.NOT_FOUND,
        f"no tenant {tenant_id!r}",
        domain=DOMAIN,
        metadata={"tenant_id": tenant_id},
    )


def _not_pending(row: Row[Any], why: str) -> ImagegateError:
    state = quota_pb2.ReservationState.Name(row.state)
    return ImagegateError(
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.RESERVATION_NOT_PENDING,
        f"reservation {row.id} cannot be committed: {why}",
        domain=DOMAIN,
        metadata={"reservation_id": row.id, "state": state},
    )


def _tenant_pb(row: Row[Any]) -> quota_pb2.Tenant:
    return quota_pb2.Tenant(
        id=row.id, name=row.name, plan=row.plan, create_time=timestamp(from_us(row.create_us))
    )


def _reservation_pb(row: Row[Any]) -> quota_pb2.Reservation:
    return quota_pb2.Reservation(
        id=row.id,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        images=row.images,
        megapixels=row.pixels / 1_000_000,
        cost_micros=row.cost_micros,
        period=row.period,
        state=row.state,
        expire_time=timestamp(from_us(row.expire_us)),
    )
