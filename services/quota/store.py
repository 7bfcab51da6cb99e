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

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine

from imagegate.grpckit.errors import ImagegateError
from imagegate.persistence import DbRunner, make_engine, migrate
from imagegate.persistence.periods import Clock, utc_now
from imagegate.quota.v1 import quota_pb2
from services.quota import keys
from services.quota.messages import DOMAIN, pixels_of
from services.quota.reservations import ReservationOps, ReserveArgs, ReserveResult
from services.quota.statements import Statements, reserve_pg_sql

__all__ = ["DOMAIN", "QuotaStore", "ReserveArgs", "ReserveResult", "pixels_of"]

_T = TypeVar("_T")


class QuotaStore(ReservationOps):
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
        self._q = Statements.prepare(self._db.sql)
        # Limits per plan id, in counter units: (images, pixels, cost_micros); 0 = unlimited.
        self._limits = {
            pid: (p.monthly_images, pixels_of(p.monthly_megapixels), p.monthly_cost_micros)
            for pid, p in plans.items()
        }
        self._q_reserve_pg = None if self._db.sqlite else reserve_pg_sql(self._limits)
        # Tenant messages by their (immutable) row tuple; bounded.
        self._tenant_cache: dict[tuple[Any, ...], quota_pb2.Tenant] = {}
        self._dummy_hash = keys.hash_key("ig_000000000000_" + "0" * 43, self._pepper)
        # Key ids that authenticated since the last flush: a set add on the hot path, one
        # UPDATE per sweep (flush_key_use) instead of a write per call.
        self._used_keys: set[str] = set()

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

    async def reserve_many(self, args: Sequence[ReserveArgs]) -> list[ReserveResult | Exception]:
        """`reserve` for each item, in order, as one group (one commit on PostgreSQL); an item's
        error is its result. An item that failed for a reason other than its own answer (a
        deadlock with another group, a lost connection) is tried again by itself."""
        return await self._grouped(self.reserve_sync, args)

    async def commit_many(
        self, requests: Sequence[quota_pb2.CommitReservationRequest]
    ) -> list[quota_pb2.Reservation | Exception]:
        """`commit` for each item, in order, as one group (one commit on PostgreSQL); an item's
        error is its result; an item failing for another reason is tried again by itself."""
        return await self._grouped(self._commit_request_sync, requests)

    def _commit_request_sync(self, r: quota_pb2.CommitReservationRequest) -> quota_pb2.Reservation:
        return self.commit_sync(r.reservation_id, r.images, r.megapixels, r.cost_micros)

    async def _grouped(self, fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T | Exception]:
        outcomes = await self._db.run_group(fn, items)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception) and not isinstance(outcome, ImagegateError):
                try:
                    outcomes[i] = await self._run_batched(fn, items[i])
                except Exception as err:
                    outcomes[i] = err
        return outcomes

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

    async def release_claims(self, claim_prefix: str) -> int:
        """Releases every pending reservation whose id starts with `claim_prefix`."""
        ids = await self._run(self.pending_with_prefix_sync, claim_prefix)
        for reservation_id in ids:
            await self.release(reservation_id)
        return len(ids)

    async def release_by_request(
        self, request_id: str, *, tenant_id: str = "", api_key: str = ""
    ) -> quota_pb2.Reservation:
        """Releases the reservation of (tenant, request_id), or leaves a RELEASED tombstone so
        a later reserve of that request_id holds nothing; the tenant is the key's when given."""
        return await self._run_batched(self.release_by_request_sync, request_id, tenant_id, api_key)

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

    async def revoke_api_key(self, key_id: str, grace_seconds: float = 0.0) -> int:
        """Revokes a key now or after a grace period (idempotent); the revocation time in
        epoch microseconds."""
        return await self._run(self.revoke_api_key_sync, key_id, grace_seconds)

    async def list_api_keys(self, tenant_id: str = "") -> list[quota_pb2.ApiKeyInfo]:
        """Keys (of one tenant, or all) without secrets, by tenant then creation."""
        return await self._run(self.list_api_keys_sync, tenant_id)

    async def flush_key_use(self) -> int:
        """Stamps the keys used since the last flush with now; how many."""
        return await self._run(self.flush_key_use_sync)

    async def list_tenants(self) -> list[quota_pb2.Tenant]:
        """Every tenant, by name."""
        return await self._run(self.list_tenants_sync)
