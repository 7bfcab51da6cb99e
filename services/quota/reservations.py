"""Reservations: hold, commit, release and expire quota units, and read the counters."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import FieldViolation, ImagegateError, QuotaViolation, timestamp
from imagegate.persistence import Tx
from imagegate.persistence.periods import period_end, period_of, to_us
from imagegate.quota.v1 import quota_pb2
from services.quota import keys, tombstones
from services.quota.messages import (
    COMMITTED,
    DOMAIN,
    EXPIRED,
    PENDING,
    RELEASED,
    not_pending,
    pixels_of,
    reservation_pb,
    tenant_not_found,
    ts,
)
from services.quota.statements import ResRow
from services.quota.tenants import TenantOps


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
    reservation_id: str = ""
    """Id for a new reservation (the caller's claim token); empty: one is made up."""


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


class ReservationOps(TenantOps):
    """Reserve, commit, release and expire, each one transaction; counters per period."""

    lease_seconds: float
    _limits: dict[str, tuple[int, int, int]]
    _q_reserve_pg: str | None
    _integrity_error: type[Exception]

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
        reservation_id = args.reservation_id or "r_" + secrets.token_hex(12)
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
                        now_us,  # a revocation still in its grace period holds
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
                    raise tenant_not_found(args.tenant_id)
                else:
                    tenant_row = got[2:6]
                inserted = None if got is None or got[6] is None else (got[6],)
                held = bool(got and got[7])
            elif args.api_key:
                tenant_row, key_id = self._authenticate(tx, args.api_key)
            else:
                tenant_row = tx.one(self._q.tenant_by_id, (args.tenant_id,))
                if tenant_row is None:
                    raise tenant_not_found(args.tenant_id)
            tenant = self._tenant_pb(tenant_row)
            tenant_id = tenant_row[0]
            plan = self._plan(tenant_row[2])
            if self._q_reserve_pg is None:
                inserted = tx.one(self._q.insert_res, (values[0], tenant_id, *values[1:]))
            if inserted is None:
                row = ResRow(*tx.one(self._q.res_by_request, (tenant_id, args.request_id)))
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
                    reservation_pb(row), tenant, plan, key_id=key_id, created=False
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
            expire_time=ts(expire_us),
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
        if tx.rowcount(self._q.hold, hold) == 1:
            return True
        # First reservation of the month: create the period row, then try again.
        tx.rowcount(self._q.ensure_period, (tenant_id, period))
        if tx.rowcount(self._q.hold, hold) == 1:
            return True
        # Leases that ran out but were not swept yet must not refuse this request.
        return bool(self._expire(tx, now_us, tenant_id=tenant_id)) and (
            tx.rowcount(self._q.hold, hold) == 1
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
            tx.one(self._q.period_row, (tenant.id, period))
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
                done = shot.one(self._q.commit_pending_pg, fast)
            if done is not None:
                return reservation_pb(ResRow(*done))
        with self._db.tx() as tx:
            # Fast path: a pending reservation within its hold; one UPDATE returns the row.
            done = tx.one(self._q.commit_pending, fast) if self._db.sqlite else None
            if done is not None:
                row = ResRow(*done)
                self._charge(tx, row, held=True, images=images, pixels=pixels, cost=cost_micros)
                return reservation_pb(row)
            for _ in range(3):
                row = self._reservation_row(tx, reservation_id)
                if row.state == COMMITTED:
                    if (row.charged_images, row.charged_pixels, row.charged_cost_micros) == (
                        images,
                        pixels,
                        cost_micros,
                    ):
                        return reservation_pb(row)
                    raise not_pending(row, "it was already committed with other amounts")
                if row.state == RELEASED:
                    raise not_pending(row, "it was released")
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
                    self._q.settle_from,
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
                return reservation_pb(
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
            self._q.charge,
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

    def pending_with_prefix_sync(self, claim_prefix: str) -> list[str]:
        """Ids of pending reservations whose id starts with `claim_prefix` (a replica's claims)."""
        with self._db.tx() as tx:
            rows = tx.all(
                self._db.sql(
                    "SELECT id FROM reservations WHERE state = ? AND substr(id, 1, ?) = ?"
                ),
                (PENDING, len(claim_prefix), claim_prefix),
            )
        return [r[0] for r in rows]

    def release_sync(self, reservation_id: str) -> quota_pb2.Reservation:
        """See `release`."""
        now_us = to_us(self.clock())
        with self._db.tx() as tx:
            moved = self._resolve_pending(tx, reservation_id, RELEASED, now_us)
            if moved is not None:
                return reservation_pb(moved)
            return reservation_pb(self._reservation_row(tx, reservation_id))

    def release_by_request_sync(
        self, request_id: str, tenant_id: str, api_key: str
    ) -> quota_pb2.Reservation:
        """See `QuotaStore.release_by_request` (services/quota/tombstones.py)."""
        now = self.clock()
        with self._db.tx() as tx:
            if api_key:
                tenant_id = self._authenticate(tx, api_key)[0][0]
            elif tx.one(self._q.tenant_by_id, (tenant_id,)) is None:
                raise tenant_not_found(tenant_id)
            row = tombstones.release_by_request(
                tx,
                self._db.sql,
                tenant_id=tenant_id,
                request_id=request_id,
                period=period_of(now),
                now_us=to_us(now),
            )
        return reservation_pb(ResRow(*row))

    def get_quota_sync(self, tenant_id: str) -> quota_pb2.QuotaStatus:
        """See `get_quota`."""
        now = self.clock()
        period = period_of(now)
        with self._db.tx() as tx:
            tenant_row = tx.one(self._q.tenant_by_id, (tenant_id,))
            if tenant_row is None:
                raise tenant_not_found(tenant_id)
            self._expire(tx, to_us(now), tenant_id=tenant_id)
            row = tx.one(self._q.period_row, (tenant_id, period))
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
            ids = tx.all(self._q.expired_all, (PENDING, now_us))
        else:
            ids = tx.all(self._q.expired_of_tenant, (PENDING, now_us, tenant_id))
        return sum(self._resolve_pending(tx, rid, EXPIRED, now_us) is not None for (rid,) in ids)

    def _resolve_pending(
        self, tx: Tx, reservation_id: str, state: int, now_us: int
    ) -> ResRow | None:
        """Moves a pending reservation to `state` and returns its units; None if not pending."""
        done = tx.one(self._q.resolve_pending, (state, now_us, reservation_id, PENDING))
        if done is None:
            return None
        row = ResRow(*done)
        tx.rowcount(
            self._q.return_units,
            (row.images, row.pixels, row.cost_micros, row.tenant_id, row.period),
        )
        return row

    def _reservation_row(self, tx: Tx, reservation_id: str) -> ResRow:
        row = tx.one(self._q.res_by_id, (reservation_id,))
        if row is None:
            raise ImagegateError(
                grpc.StatusCode.NOT_FOUND,
                reasons.NOT_FOUND,
                f"no reservation {reservation_id!r}",
                domain=DOMAIN,
                metadata={"reservation_id": reservation_id},
            )
        return ResRow(*row)
