"""Reservation: hold the caller's quota for a planned request (or serve fail-open without Quota)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
from pathlib import Path

import grpc

from imagegate.grpckit import reasons
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from services.router.admission import Admitted, Authenticator, Caller, quota_error
from services.router.attempt import MIN_USEFUL_ATTEMPT
from services.router.config import RouterSettings
from services.router.pending import PendingWork
from services.router.planning import RoutePlan
from services.router.reserve_batch import ReserveBatcher

log = logging.getLogger("services.router")
# How long a release for a caller who left may take, and how often it is tried.
RELEASE_TIMEOUT_SECONDS = 2.0
RELEASE_TRIES = 3
# Own-call endings after which Quota may still have written the hold.
MAYBE_HELD = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


def claim_prefix(replica_id: str) -> str:
    """The reservation-id prefix of one replica's claims (stable across its restarts)."""
    return "r_" + hashlib.sha256(replica_id.encode()).hexdigest()[:8]


def default_replica_id(data_dir: Path) -> str:
    """Host name plus the data directory: stable across restarts, distinct per replica."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]
    return f"{socket.gethostname()}-{digest}"


class Reserver:
    """Reserves quota through Quota, which re-checks the key (a revoked key never generates)."""

    def __init__(
        self,
        quota: quota_pb2_grpc.QuotaServiceStub,
        authenticator: Authenticator,
        settings: RouterSettings,
        pending: PendingWork,
        batcher: ReserveBatcher,
    ) -> None:
        self._quota = quota
        self._batcher = batcher
        self._auth = authenticator
        self._settings = settings
        self._pending = pending
        self.prefix = claim_prefix(settings.replica_id or default_replica_id(settings.data_dir))

    def new_claim(self) -> str:
        """A reservation id only this call knows: finding it on a repeat's answer means "ours";
        its prefix names this replica, so a restart can release what a killed life left held."""
        return self.prefix + secrets.token_hex(12)

    async def release_stale_claims(self) -> None:
        """Releases the holds this replica's previous life left (killed mid-request)."""
        try:
            resp = await self._quota.ReleaseClaims(
                quota_pb2.ReleaseClaimsRequest(claim_prefix=self.prefix),
                timeout=self._settings.dependency_timeout_seconds,
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "claims of an earlier run not released (their leases will expire)",
                extra={"code": err.code().name},
            )
            return
        if resp.released:
            log.info("released an earlier run's claims", extra={"released": resp.released})

    async def reserve(
        self, admitted: Admitted, cost_micros: int, plan: RoutePlan, claim: str
    ) -> quota_pb2.Reservation | None:
        """The hold; None when Quota is unreachable and fail-open lets the request through."""
        norm = admitted.norm
        req = quota_pb2.ReserveQuotaRequest(
            api_key=admitted.api_key,
            request_id=admitted.request_id,
            images=norm.num_images,
            megapixels=norm.megapixels,
            cost_micros=cost_micros,
            reservation_id=claim,
        )
        # Bounded by the caller's deadline, not a short fixed timeout: under a burst Quota queues,
        # and a caller with time left would rather wait than fail.
        left = (
            admitted.deadline.remaining()
            - self._settings.settle_margin_seconds
            - MIN_USEFUL_ATTEMPT
        )
        timeout = max(0.001, min(self._settings.reserve_timeout_seconds, left))
        try:
            resp = await self._batcher.reserve(req, timeout)
        except asyncio.CancelledError:
            self._release_later(admitted)
            raise
        except grpc.RpcError as err:
            if err.code() in MAYBE_HELD:
                # Quota may have written the hold after we stopped listening: hand it back (a
                # release that arrives first leaves a tombstone the late reserve finds).
                self._release_later(admitted)
            error = quota_error(err)
            if error.reason == reasons.DEPENDENCY_UNAVAILABLE and self._settings.fail_open:
                plan.notices.append(
                    "quota service unreachable: served in fail-open mode; usage is recorded "
                    "and charged when it returns"
                )
                log.warning(
                    "quota unreachable, serving in fail-open mode",
                    extra={"tenant_id": admitted.caller.tenant_id},
                )
                return None
            raise error from None
        self._auth.remember(admitted.api_key, Caller(resp.tenant.id, resp.plan, resp.key_id))
        return resp.reservation

    def _release_later(self, admitted: Admitted) -> None:
        self._pending.spawn(admitted.caller.tenant_id, self._release(admitted))

    async def _release(self, admitted: Admitted) -> None:
        req = quota_pb2.ReleaseReservationRequest(
            by_request=quota_pb2.RequestRef(
                request_id=admitted.request_id, api_key=admitted.api_key
            )
        )
        for attempt in range(RELEASE_TRIES):
            try:
                await self._quota.ReleaseReservation(req, timeout=RELEASE_TIMEOUT_SECONDS)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == RELEASE_TRIES - 1:
                    log.warning(
                        "hold of an abandoned request not released; its lease will expire",
                        extra={"request_id": admitted.request_id, "code": err.code().name},
                    )
                    return
                await asyncio.sleep(0.1 * (attempt + 1))
