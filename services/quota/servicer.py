"""QuotaService servicer: validates every request, checks admin credentials, calls QuotaStore."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.auth import require_admin
from imagegate.grpckit.batch import check_batch_size
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument, timestamp
from imagegate.persistence.periods import from_us
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from services.quota.store import DOMAIN, QuotaStore, ReserveArgs, ReserveResult

MAX_ID = 255
MAX_NAME = 100
# Longest overlap a rotation may give an old key.
MAX_GRACE_SECONDS = 30 * 24 * 3600

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_In = TypeVar("_In")
_R = TypeVar("_R")


def item_error(err: Exception) -> quota_pb2.ItemError:
    """What one failed batch item reports: the code, reason and message its single RPC would."""
    if isinstance(err, ImagegateError):
        return quota_pb2.ItemError(
            code=err.code.value[0],
            reason=err.reason,
            message=err.message,
            details=err.with_domain(DOMAIN).to_status_proto().details,
        )
    log.error("unexpected error in a batch item", exc_info=err)
    return quota_pb2.ItemError(
        code=grpc.StatusCode.INTERNAL.value[0], reason=reasons.INTERNAL, message="internal error"
    )


def _check_commit(
    request: quota_pb2.CommitReservationRequest,
) -> quota_pb2.CommitReservationRequest:
    """The commit, validated (INVALID_ARGUMENT with every problem found)."""
    violations: list[FieldViolation] = []
    _require_id(violations, "reservation_id", request.reservation_id)
    if request.images < 0:
        violations.append(FieldViolation("images", "at least 0"))
    _megapixels(violations, request.megapixels)
    if request.cost_micros < 0:
        violations.append(FieldViolation("cost_micros", "at least 0"))
    _check(violations)
    return request


def _checked(
    items: Iterable[_In], check: Callable[[_In], _T]
) -> tuple[list[_T], dict[int, ImagegateError]]:
    """A batch's items validated: the valid ones (checked), and each refusal by its index."""
    valid: list[_T] = []
    refused: dict[int, ImagegateError] = {}
    for i, item in enumerate(items):
        try:
            valid.append(check(item))
        except ImagegateError as err:
            refused[i] = err
    return valid, refused


def _in_order(
    count: int, refused: dict[int, ImagegateError], written: Iterable[_R]
) -> list[_R | Exception]:
    """Every item's outcome in request order: its refusal, else what the store answered."""
    answers = iter(written)
    return [refused[i] if i in refused else next(answers) for i in range(count)]


def _with_reservation(
    result: ReserveResult, reservation: quota_pb2.Reservation | None
) -> ReserveResult:
    return result if reservation is None else dataclasses.replace(result, reservation=reservation)


def _reserve_response(result: ReserveResult) -> quota_pb2.ReserveQuotaResponse:
    return quota_pb2.ReserveQuotaResponse(
        reservation=result.reservation,
        tenant=result.tenant,
        plan=result.plan,
        key_id=result.key_id,
        created=result.created,
    )


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations, domain=DOMAIN)


def _require_id(violations: list[FieldViolation], field: str, value: str) -> None:
    if not value:
        violations.append(FieldViolation(field, "required"))
    elif len(value) > MAX_ID:
        violations.append(FieldViolation(field, f"at most {MAX_ID} characters"))


def _megapixels(violations: list[FieldViolation], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        violations.append(FieldViolation("megapixels", "a finite number >= 0"))


def _caller_gone(context: grpc.aio.ServicerContext) -> str:
    """Why nobody will read this call's answer any more; empty while the caller waits."""
    if context.cancelled():
        return "call cancelled"
    if context.done():
        return "call done"
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "deadline passed"
    return ""


# A caller-chosen reservation id (a claim token).
RESERVATION_ID = re.compile(r"r_[0-9a-f]{24,32}")
# One replica's claim tokens share this prefix.
CLAIM_PREFIX = re.compile(r"r_[0-9a-f]{8}")


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """The QuotaService RPCs; admin RPCs need `authorization: Bearer <admin token>`."""

    def __init__(
        self, store: QuotaStore, *, admin_token: str, max_lease_seconds: float = 3600.0
    ) -> None:
        self._store = store
        self._admin_token = admin_token
        self._max_lease = max_lease_seconds
        # Releases of holds whose caller left; kept so they finish (and are awaited on stop).
        self._cleanups: set[asyncio.Task[object]] = set()

    @property
    def releasing(self) -> int:
        """How many holds of callers that left are waiting for their write or release now."""
        return len(self._cleanups)

    async def drain(self) -> None:
        """Waits for the releases of abandoned holds still running (call before closing the store)."""
        while self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def AuthenticateApiKey(
        self, request: quota_pb2.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.AuthenticateApiKeyResponse:
        """Resolves a key to its tenant and plan."""
        violations: list[FieldViolation] = []
        if not request.api_key:
            violations.append(FieldViolation("api_key", "required"))
        _check(violations)
        tenant, plan, key_id = await self._store.authenticate(request.api_key)
        return quota_pb2.AuthenticateApiKeyResponse(tenant=tenant, plan=plan, key_id=key_id)

    def _reserve_args(self, request: quota_pb2.ReserveQuotaRequest) -> ReserveArgs:
        """A ReserveQuota request validated (INVALID_ARGUMENT with every problem found)."""
        violations: list[FieldViolation] = []
        _require_id(violations, "request_id", request.request_id)
        if not request.api_key and not request.tenant_id:
            violations.append(FieldViolation("tenant_id", "required when api_key is not set"))
        if request.images < 1:
            violations.append(FieldViolation("images", "at least 1"))
        _megapixels(violations, request.megapixels)
        if request.cost_micros < 0:
            violations.append(FieldViolation("cost_micros", "at least 0"))
        if request.reservation_id and not RESERVATION_ID.fullmatch(request.reservation_id):
            violations.append(
                FieldViolation("reservation_id", '"r_" then 24 to 32 lowercase hex characters')
            )
        lease: float | None = None
        if request.HasField("lease"):
            lease = request.lease.ToTimedelta().total_seconds()
            if lease <= 0 or lease > self._max_lease:
                violations.append(
                    FieldViolation("lease", f"more than 0 and at most {self._max_lease:g} seconds")
                )
        _check(violations)
        return ReserveArgs(
            request_id=request.request_id,
            tenant_id=request.tenant_id,
            api_key=request.api_key,
            images=request.images,
            megapixels=request.megapixels,
            cost_micros=request.cost_micros,
            lease_seconds=lease,
            reservation_id=request.reservation_id,
        )

    async def ReserveQuota(
        self, request: quota_pb2.ReserveQuotaRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ReserveQuotaResponse:
        """Holds units under a lease (authenticating the key first when one is given)."""
        args = self._reserve_args(request)
        # The write runs on a database thread whatever happens to this handler, so it is shielded
        # and, when the caller is gone by the time it lands, undone: nobody will settle the hold.
        write = asyncio.ensure_future(self._store.reserve(args))
        try:
            result = await asyncio.shield(write)
        except asyncio.CancelledError:
            self._spawn(self._release_when_written(write, "handler cancelled"))
            raise
        gone = _caller_gone(context)
        if gone:
            released = await self._release_abandoned(result, gone)
            if released is not None:
                result = dataclasses.replace(result, reservation=released)
        elif result.reservation.state == quota_pb2.RESERVATION_STATE_PENDING:
            # A cancel that lands after this return but before the answer goes out.
            context.add_done_callback(lambda ctx: self._release_if_cancelled(ctx, [result]))
        return _reserve_response(result)

    async def BatchReserveQuota(
        self, request: quota_pb2.BatchReserveQuotaRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.BatchReserveQuotaResponse:
        """Reserves every item as ReserveQuota would, as one group (one commit on PostgreSQL);
        per-item results in request order."""
        check_batch_size(len(request.requests), domain=DOMAIN)
        valid, refused = _checked(request.requests, self._reserve_args)
        # Shielded like ReserveQuota's write: when the caller is gone by the time it lands, the
        # holds are undone.
        write = asyncio.ensure_future(self._store.reserve_many(valid))
        try:
            outcomes = _in_order(len(request.requests), refused, await asyncio.shield(write))
        except asyncio.CancelledError:
            self._spawn(self._release_when_written(write, "handler cancelled"))
            raise
        made = [o for o in outcomes if isinstance(o, ReserveResult)]
        gone = _caller_gone(context)
        if gone:
            # The releases run as tasks of their own (this handler may be cancelled any moment
            # now); an answer that still gets out says what they did.
            releases = [self._spawn(self._release_abandoned(r, gone)) for r in made]
            released = iter(await asyncio.shield(asyncio.gather(*releases)))
            outcomes = [
                _with_reservation(o, next(released)) if isinstance(o, ReserveResult) else o
                for o in outcomes
            ]
        elif any(r.reservation.state == quota_pb2.RESERVATION_STATE_PENDING for r in made):
            context.add_done_callback(lambda ctx: self._release_if_cancelled(ctx, made))
        response = quota_pb2.BatchReserveQuotaResponse()
        for outcome in outcomes:
            if isinstance(outcome, ReserveResult):
                response.results.add(response=_reserve_response(outcome))
            else:
                response.results.add(error=item_error(outcome))
        return response

    def _release_if_cancelled(
        self, context: grpc.aio.ServicerContext, results: list[ReserveResult]
    ) -> None:
        if context.cancelled():
            for result in results:
                self._spawn(self._release_abandoned(result, "cancelled before the answer was sent"))

    def _spawn(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(work)
        self._cleanups.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._cleanups.discard)  # type: ignore[arg-type]
        return task

    async def _release_when_written(
        self,
        write: asyncio.Future[ReserveResult] | asyncio.Future[list[ReserveResult | Exception]],
        why: str,
    ) -> None:
        try:
            written = await write
        except Exception as err:
            log.debug("abandoned reserve held nothing", extra={"why": why, "error": repr(err)})
            return
        for result in written if isinstance(written, list) else [written]:
            if isinstance(result, ReserveResult):
                await self._release_abandoned(result, why)

    async def _release_abandoned(
        self, result: ReserveResult, why: str
    ) -> quota_pb2.Reservation | None:
        """Releases a hold whose caller left; the reservation after, or None if it held nothing."""
        held = result.reservation
        if held.state != quota_pb2.RESERVATION_STATE_PENDING:
            return None
        try:
            released = await self._store.release(held.id)
        except Exception:
            # The lease still returns the units when it runs out.
            log.exception("could not release an abandoned hold", extra={"reservation_id": held.id})
            return None
        log.debug(
            "released the hold of a caller that left",
            extra={
                "why": why,
                "reservation_id": held.id,
                "tenant_id": held.tenant_id,
                "request_id": held.request_id,
            },
        )
        return released

    async def CommitReservation(
        self, request: quota_pb2.CommitReservationRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.CommitReservationResponse:
        """Charges the actual amount; the rest returns to the tenant."""
        return quota_pb2.CommitReservationResponse(reservation=await self._commit(request))

    async def BatchCommitReservations(
        self,
        request: quota_pb2.BatchCommitReservationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> quota_pb2.BatchCommitReservationsResponse:
        """Commits every item as CommitReservation would; per-item results in request order."""
        check_batch_size(len(request.requests), domain=DOMAIN)
        valid, refused = _checked(request.requests, _check_commit)
        # One group: one transaction (one WAL flush) on PostgreSQL, like the reserves.
        outcomes = _in_order(len(request.requests), refused, await self._store.commit_many(valid))
        response = quota_pb2.BatchCommitReservationsResponse()
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                response.results.add(error=item_error(outcome))
            else:
                response.results.add(reservation=outcome)
        return response

    async def _commit(self, request: quota_pb2.CommitReservationRequest) -> quota_pb2.Reservation:
        _check_commit(request)
        return await self._store.commit(
            request.reservation_id,
            images=request.images,
            megapixels=request.megapixels,
            cost_micros=request.cost_micros,
        )

    async def ReleaseReservation(
        self, request: quota_pb2.ReleaseReservationRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ReleaseReservationResponse:
        """Returns every unit of a pending reservation, named by id or by (tenant, request_id)."""
        violations: list[FieldViolation] = []
        if not request.HasField("by_request"):
            _require_id(violations, "reservation_id", request.reservation_id)
            _check(violations)
            reservation = await self._store.release(request.reservation_id)
            return quota_pb2.ReleaseReservationResponse(reservation=reservation)
        ref = request.by_request
        if request.reservation_id:
            violations.append(
                FieldViolation("reservation_id", "must be empty when by_request is set")
            )
        _require_id(violations, "by_request.request_id", ref.request_id)
        if not ref.api_key:
            _require_id(violations, "by_request.tenant_id", ref.tenant_id)
        _check(violations)
        reservation = await self._store.release_by_request(
            ref.request_id, tenant_id=ref.tenant_id, api_key=ref.api_key
        )
        return quota_pb2.ReleaseReservationResponse(reservation=reservation)

    async def ReleaseClaims(
        self, request: quota_pb2.ReleaseClaimsRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ReleaseClaimsResponse:
        """Releases the pending claims a Router replica's previous life left behind."""
        if not CLAIM_PREFIX.fullmatch(request.claim_prefix):
            _check([FieldViolation("claim_prefix", '"r_" then 8 lowercase hex characters')])
        released = await self._store.release_claims(request.claim_prefix)
        if released:
            log.info("released a restarted replica's claims", extra={"released": released})
        return quota_pb2.ReleaseClaimsResponse(released=released)

    async def GetQuota(
        self, request: quota_pb2.GetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.GetQuotaResponse:
        """The tenant's quota for the current period."""
        violations: list[FieldViolation] = []
        _require_id(violations, "tenant_id", request.tenant_id)
        _check(violations)
        return quota_pb2.GetQuotaResponse(quota=await self._store.get_quota(request.tenant_id))

    async def ListPlans(
        self, request: quota_pb2.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ListPlansResponse:
        """The configured plans."""
        return quota_pb2.ListPlansResponse(plans=list(self._store.plans.values()))

    async def CreateTenant(
        self, request: quota_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.CreateTenantResponse:
        """Admin: creates a tenant (idempotent on request_id)."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        if len(request.request_id) > MAX_ID:
            violations.append(FieldViolation("request_id", f"at most {MAX_ID} characters"))
        name = request.name.strip()
        if not name or len(name) > MAX_NAME or name != request.name:
            violations.append(
                FieldViolation("name", f"1 to {MAX_NAME} characters, no surrounding spaces")
            )
        if request.plan and request.plan not in self._store.plans:
            violations.append(
                FieldViolation("plan", f"unknown plan; one of {sorted(self._store.plans)}")
            )
        _check(violations)
        tenant = await self._store.create_tenant(
            request_id=request.request_id, name=request.name, plan=request.plan
        )
        return quota_pb2.CreateTenantResponse(tenant=tenant)

    async def SetTenantPlan(
        self, request: quota_pb2.SetTenantPlanRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.SetTenantPlanResponse:
        """Admin: moves a tenant to another plan."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        _require_id(violations, "tenant_id", request.tenant_id)
        if request.plan not in self._store.plans:
            violations.append(
                FieldViolation("plan", f"unknown plan; one of {sorted(self._store.plans)}")
            )
        _check(violations)
        tenant = await self._store.set_tenant_plan(request.tenant_id, request.plan)
        return quota_pb2.SetTenantPlanResponse(tenant=tenant)

    async def CreateApiKey(
        self, request: quota_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.CreateApiKeyResponse:
        """Admin: creates a key; the secret is in this response only."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        _require_id(violations, "tenant_id", request.tenant_id)
        if len(request.label) > MAX_NAME:
            violations.append(FieldViolation("label", f"at most {MAX_NAME} characters"))
        _check(violations)
        api_key, key_id = await self._store.create_api_key(request.tenant_id, request.label)
        return quota_pb2.CreateApiKeyResponse(api_key=api_key, key_id=key_id)

    async def RevokeApiKey(
        self, request: quota_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.RevokeApiKeyResponse:
        """Admin: revokes a key at once (repeat calls return the first revocation time)."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        _require_id(violations, "key_id", request.key_id)
        grace = 0.0
        if request.HasField("grace_period"):
            grace = request.grace_period.ToTimedelta().total_seconds()
            if not 0 <= grace <= MAX_GRACE_SECONDS:
                violations.append(
                    FieldViolation("grace_period", f"0 to {MAX_GRACE_SECONDS} seconds (30 days)")
                )
        _check(violations)
        revoked_us = await self._store.revoke_api_key(request.key_id, grace)
        return quota_pb2.RevokeApiKeyResponse(revoke_time=timestamp(from_us(revoked_us)))

    async def ListApiKeys(
        self, request: quota_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ListApiKeysResponse:
        """Admin: keys without secrets (prefix, label, creation, last use, revocation)."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        if len(request.tenant_id) > MAX_ID:
            violations.append(FieldViolation("tenant_id", f"at most {MAX_ID} characters"))
        _check(violations)
        # Stamp the uses so far, so the list is as fresh as this call.
        await self._store.flush_key_use()
        return quota_pb2.ListApiKeysResponse(
            keys=await self._store.list_api_keys(request.tenant_id)
        )

    async def ListTenants(
        self, request: quota_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> quota_pb2.ListTenantsResponse:
        """Admin: every tenant, by name."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        return quota_pb2.ListTenantsResponse(tenants=await self._store.list_tenants())
