"""Tenants and API keys: the Quota store's account operations."""

from __future__ import annotations

import secrets
from typing import Any, cast

import grpc
from sqlalchemy import Engine, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument
from imagegate.persistence import DbRunner, Tx
from imagegate.persistence.periods import Clock, to_us
from imagegate.quota.v1 import quota_pb2
from services.quota import keys
from services.quota.messages import DOMAIN, tenant_not_found, tenant_row_pb, ts
from services.quota.models import ApiKey, Tenant
from services.quota.plans import DEFAULT_PLAN
from services.quota.statements import Statements

_tenants: Table = cast(Table, Tenant.__table__)
_keys: Table = cast(Table, ApiKey.__table__)


class TenantOps:
    """Creating tenants and keys, and authenticating keys; the state every operation shares."""

    engine: Engine
    plans: dict[str, quota_pb2.Plan]
    clock: Clock
    _pepper: bytes
    _db: DbRunner
    _q: Statements
    _tenant_cache: dict[tuple[Any, ...], quota_pb2.Tenant]
    _dummy_hash: str
    _used_keys: set[str]

    def authenticate_sync(self, api_key: str) -> tuple[quota_pb2.Tenant, quota_pb2.Plan, str]:
        """See `authenticate`."""
        with self._db.tx() as tx:
            tenant_row, key_id = self._authenticate(tx, api_key)
        tenant = self._tenant_pb(tenant_row)
        return tenant, self._plan(tenant.plan), key_id

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
                    return tenant_row_pb(row)
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
            return tenant_row_pb(
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
                raise tenant_not_found(tenant_id)
            return tenant_row_pb(
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
                raise tenant_not_found(tenant_id)
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

    def revoke_api_key_sync(self, key_id: str, grace_seconds: float = 0.0) -> int:
        """See `revoke_api_key`."""
        at_us = to_us(self.clock()) + int(grace_seconds * 1_000_000)
        with self.engine.begin() as conn:
            # Only ever earlier: a repeat (or a shorter grace) never revives a key.
            conn.execute(
                update(_keys)
                .where(
                    _keys.c.key_id == key_id,
                    (_keys.c.revoke_us.is_(None)) | (_keys.c.revoke_us > at_us),
                )
                .values(revoke_us=at_us)
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

    def list_api_keys_sync(self, tenant_id: str = "") -> list[quota_pb2.ApiKeyInfo]:
        """See `list_api_keys`."""
        query = select(
            _keys.c.key_id,
            _keys.c.tenant_id,
            _keys.c.label,
            _keys.c.create_us,
            _keys.c.last_used_us,
            _keys.c.revoke_us,
        ).order_by(_keys.c.tenant_id, _keys.c.create_us, _keys.c.key_id)
        if tenant_id:
            query = query.where(_keys.c.tenant_id == tenant_id)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        out = []
        for key_id, tenant, label, create_us, used_us, revoke_us in rows:
            info = quota_pb2.ApiKeyInfo(
                key_id=key_id, tenant_id=tenant, label=label, create_time=ts(create_us)
            )
            if used_us is not None:
                info.last_use_time.CopyFrom(ts(used_us))
            if revoke_us is not None:
                info.revoke_time.CopyFrom(ts(revoke_us))
            out.append(info)
        return out

    def flush_key_use_sync(self) -> int:
        """See `flush_key_use`."""
        if not self._used_keys:
            return 0
        used, self._used_keys = self._used_keys, set()
        now_us = to_us(self.clock())
        with self.engine.begin() as conn:
            conn.execute(
                update(_keys)
                .where(
                    _keys.c.key_id.in_(sorted(used)),
                    (_keys.c.last_used_us.is_(None)) | (_keys.c.last_used_us < now_us),
                )
                .values(last_used_us=now_us)
            )
        return len(used)

    def list_tenants_sync(self) -> list[quota_pb2.Tenant]:
        """See `list_tenants`."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(_tenants).order_by(_tenants.c.name)).all()
        return [tenant_row_pb(r) for r in rows]

    def _authenticate(self, tx: Tx, api_key: str) -> tuple[tuple[Any, ...], str]:
        """(tenant row (id, name, plan, create_us), key id) of a key, in the open transaction."""
        key_id = keys.key_id_of(api_key)
        row = None
        if key_id is not None:
            row = tx.one(self._q.key_by_id, (key_id,))
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
        # A revocation time in the future is a rotation's overlap: the key still works.
        if row[1] is not None and row[1] <= to_us(self.clock()):
            raise ImagegateError(
                grpc.StatusCode.UNAUTHENTICATED,
                reasons.API_KEY_REVOKED,
                f"API key {key_id} was revoked",
                domain=DOMAIN,
                metadata={"key_id": key_id},
            )
        self._used_keys.add(key_id)
        return row[2:6], key_id

    def _tenant_pb(self, row: tuple[Any, ...]) -> quota_pb2.Tenant:
        """The Tenant message of a (id, name, plan, create_us) row, built once per row value."""
        cached = self._tenant_cache.get(row)
        if cached is None:
            if len(self._tenant_cache) >= 10_000:
                self._tenant_cache.clear()
            cached = quota_pb2.Tenant(id=row[0], name=row[1], plan=row[2], create_time=ts(row[3]))
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
