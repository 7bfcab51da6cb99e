"""Request-id deduplication per tenant: in-flight repeats wait, finished results are replayed."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError
from imagegate.quota.v1 import quota_pb2
from imagegate.router.v1 import router_pb2
from services.router.events import EventSink

DOMAIN = "imagegate.router"
Outcome = tuple[router_pb2.GenerateImageResponse | None, ImagegateError | None]


def fingerprint(request: router_pb2.GenerateImageRequest) -> bytes:
    """Digest of the request body without its id: same id + different body is a reuse."""
    body = router_pb2.GenerateImageRequest()
    body.CopyFrom(request)
    body.request_id = ""
    return hashlib.sha256(body.SerializeToString(deterministic=True)).digest()


def key_reused_error(request_id: str) -> ImagegateError:
    """The error for a request_id sent again with another body."""
    return ImagegateError(
        grpc.StatusCode.ALREADY_EXISTS,
        reasons.IDEMPOTENCY_KEY_REUSED,
        f"request_id {request_id!r} was already used with a different request body",
        domain=DOMAIN,
        metadata={"request_id": request_id},
    )


@dataclass
class _Entry:
    fingerprint: bytes
    future: asyncio.Future[Outcome]
    done_at: float | None = None
    size: int = 0


class IdempotencyCache:
    """Bounded in-memory store of in-flight and finished requests, keyed by (tenant, request_id)."""

    def __init__(
        self,
        *,
        retention_seconds: float,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retention = retention_seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        # Finished keys in finish order, so sweeping never walks in-flight entries.
        self._done: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Ids whose results were dropped; a repeat gets RESULT_EXPIRED instead of a second run.
        self._tombstones: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        """Bytes of finished results held."""
        return self._bytes

    def lookup(self, tenant: str, request_id: str, fp: bytes) -> asyncio.Future[Outcome] | None:
        """The future of an earlier request with this id, or None when there is none.

        Raises ALREADY_EXISTS (IDEMPOTENCY_KEY_REUSED) for the same id with another body and
        RESULT_EXPIRED when the earlier result is no longer held.
        """
        self._sweep()
        key = (tenant, request_id)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fp:
                raise key_reused_error(request_id)
            return entry.future
        if key in self._tombstones:
            raise self.expired_error(request_id)
        return None

    def expired_error(self, request_id: str) -> ImagegateError:
        """The error for a repeat whose result is gone."""
        return ImagegateError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.RESULT_EXPIRED,
            f"request_id {request_id!r} already ran and its result is no longer held "
            f"(kept {self._retention:g}s); send a new request_id to generate again",
            domain=DOMAIN,
            metadata={"request_id": request_id, "retention_seconds": f"{self._retention:g}"},
        )

    def spent_error(self, request_id: str, reservation: quota_pb2.Reservation) -> ImagegateError:
        """The error for a repeat whose reservation Quota already settled."""
        if reservation.state == quota_pb2.RESERVATION_STATE_COMMITTED:
            return self.expired_error(request_id)
        return ImagegateError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.REQUEST_ID_SPENT,
            f"request_id {request_id!r} already ended without images (it failed, or its caller "
            "left before it ran); nothing is held or charged for it now; send a new request_id "
            "to try again",
            domain=DOMAIN,
            metadata={"request_id": request_id},
        )

    def begin(self, tenant: str, request_id: str, fp: bytes) -> asyncio.Future[Outcome]:
        """Registers a request as in flight; call `lookup` first in the same loop step."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._entries[(tenant, request_id)] = _Entry(fingerprint=fp, future=future)
        return future

    def finish(self, tenant: str, request_id: str, outcome: Outcome) -> None:
        """Stores the outcome and wakes every waiting repeat."""
        key = (tenant, request_id)
        entry = self._entries.get(key)
        if entry is None:
            return
        if not entry.future.done():
            entry.future.set_result(outcome)
        entry.done_at = self._clock()
        response = outcome[0]
        entry.size = response.ByteSize() if response is not None else 256
        self._bytes += entry.size
        self._done[key] = None
        self._sweep()

    def forget(self, tenant: str, request_id: str) -> None:
        """Drops an in-flight entry whose owner failed before producing an outcome."""
        entry = self._entries.pop((tenant, request_id), None)
        if entry is not None and not entry.future.done():
            entry.future.cancel()

    def _sweep(self) -> None:
        now = self._clock()
        while self._done:
            key = next(iter(self._done))
            entry = self._entries[key]
            assert entry.done_at is not None
            over = len(self._entries) > self._max_entries or self._bytes > self._max_bytes
            if not over and now - entry.done_at < self._retention:
                break
            del self._done[key]
            del self._entries[key]
            self._bytes -= entry.size
            self._tombstones[key] = now
        while len(self._tombstones) > self._max_entries * 10:
            self._tombstones.popitem(last=False)


async def await_outcome(
    earlier: asyncio.Future[Outcome],
    deadline: Deadline,
    request_id: str,
    events: EventSink | None,
) -> router_pb2.GenerateImageResponse:
    """A repeat waits for the first call with its id (within its own deadline) and replays it."""
    try:
        response, error = await asyncio.wait_for(
            asyncio.shield(earlier), timeout=max(0.001, deadline.remaining())
        )
    except TimeoutError:
        raise ImagegateError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            reasons.DEADLINE_TOO_SHORT,
            f"request_id {request_id!r} is still running; this repeat's deadline ran out",
            domain=DOMAIN,
            metadata={"request_id": request_id},
        ) from None
    except asyncio.CancelledError:
        if earlier.cancelled():
            raise ImagegateError(
                grpc.StatusCode.ABORTED,
                reasons.INTERNAL,
                f"the first call with request_id {request_id!r} was abandoned; retry",
                domain=DOMAIN,
                metadata={"request_id": request_id},
            ) from None
        raise
    if error is not None:
        raise error
    assert response is not None
    if events is not None:
        events.emit(accepted=router_pb2.Accepted(request_id=request_id, trace_id=response.trace_id))
    return response
