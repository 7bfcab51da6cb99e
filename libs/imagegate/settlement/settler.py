"""Settler: writes each settlement ahead to the outbox, delivers it, replays what is parked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import grpc

from imagegate.grpckit.replied import Replied
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.settlement import outbox_rows
from imagegate.settlement.batching import Batcher
from imagegate.settlement.outbox import Outbox
from imagegate.settlement.parts import COMMIT, RECORD, RELEASE, Part, Settlement

log = logging.getLogger(__name__)

# Codes meaning "not processed, or maybe processed": safe to resend to an idempotent receiver.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
MAX_BACKOFF = 60.0


class Settler:
    """Settles requests against Quota and Metering, parking what cannot be delivered now.

    Every part is written to a local SQLite outbox before it is sent (write-ahead), sent, and
    removed once the dependency accepted it. A part that could not be delivered (dependency
    unavailable, timed out, or this process crashed) stays in the outbox and is replayed in the
    background, after a restart too. Delivery is at-least-once; both receivers are idempotent
    (CommitReservation and ReleaseReservation on the reservation id, RecordUsage on (tenant,
    request_id)), so each settlement takes effect exactly once. A part the receiver refuses for
    good (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) is kept as a dead letter, never retried.
    `settle` delivers before returning; `settle_in_background` returns once the parts are written.

    Commits and usage records are sent in batches (BatchCommitReservations, BatchRecordUsage):
    a delivery round takes whatever parts of its kind are waiting when it starts (at most
    MAX_BATCH) and sends them in one call (a lone part as its single call); parts arriving
    meanwhile wait for the next round.
    Each item's result is handled as its own call's would be (deleted, parked, or buried). A
    receiver without the batch RPCs (UNIMPLEMENTED) gets single calls from then on.
    """

    def __init__(
        self,
        *,
        quota: quota_pb2_grpc.QuotaServiceStub,
        metering: metering_pb2_grpc.MeteringServiceStub,
        outbox_path: Path,
        retry_interval: float = 1.0,
        replay_timeout: float = 5.0,
    ) -> None:
        self._quota = quota
        self._metering = metering
        self._outbox = Outbox(Path(outbox_path))
        self._retry_interval = retry_interval
        self._replay_timeout = replay_timeout
        self._pending: set[int] = set()
        self._in_flight: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._deliveries: dict[str, set[asyncio.Task[Any]]] = {}
        self._batcher = Batcher(quota, metering)

    @property
    def batch_calls(self) -> dict[str, int]:
        """Batch RPCs sent per kind (for tests and measurement)."""
        return self._batcher.batch_calls

    # ---- lifecycle ----

    async def start(self) -> None:
        """Opens the outbox and starts replaying whatever an earlier run left in it."""
        await asyncio.to_thread(self._outbox.open)
        self._pending = set(self._outbox.pending_at_open)
        self._task = asyncio.create_task(self._replay_forever(), name="settler-replay")
        if self._pending:
            log.info("outbox has undelivered settlements", extra={"count": len(self._pending)})
            self._wake.set()

    async def close(self, grace: float = 5.0) -> None:
        """Lets background deliveries finish (bounded), stops replaying, closes the outbox.

        Undelivered parts stay in the outbox for the next start.
        """
        running = {t for tasks in self._deliveries.values() for t in tasks}
        if running:
            await asyncio.wait(running, timeout=grace)
            for t in running:
                t.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._batcher.close()
        await asyncio.to_thread(self._outbox.close)

    def pending(self) -> int:
        """Parts written but not yet delivered (dead letters excluded)."""
        return len(self._pending)

    async def dead_letters(self) -> int:
        """Parts a receiver refused for good."""
        return int(await self._outbox.call(outbox_rows.count_dead))

    # ---- settling ----

    async def settle(self, s: Settlement, *, timeout: float) -> metering_pb2.UsageRecord | None:
        """Commits (or releases) and records concurrently; never raises for dependency outages.

        Returns the stored usage record when Metering accepted it now; None when there was no
        record or it was parked in the outbox (it will be delivered later). The quota part is
        independent: when it could not be delivered it is parked too.
        """
        written = await self._write_ahead(s, timeout)
        if not written:
            return None
        return await self._deliver_all(written, timeout)

    async def settle_in_background(
        self, s: Settlement, *, key: str, timeout: float, after: Replied | None = None
    ) -> None:
        """Writes the settlement ahead durably, then delivers it without the caller waiting.

        Returns once the parts are in the outbox (a crash from here on loses nothing). Delivery
        runs in a task tracked under `key` (the tenant), so `wait_settled(key)` can hold a read
        back until this tenant's settlements have reached Quota and Metering; with `after`, it
        starts once that RPC has answered.
        """
        written = await self._write_ahead(s, timeout)
        if not written:
            return
        delivery = self._deliver_all(written, timeout)
        task = asyncio.create_task(after.then(delivery) if after is not None else delivery)
        tasks = self._deliveries.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(lambda t: self._delivered(key, t))

    def _delivered(self, key: str, task: asyncio.Task[Any]) -> None:
        tasks = self._deliveries.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._deliveries[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("background settlement failed unexpectedly", exc_info=task.exception())

    async def wait_settled(self, key: str, timeout: float) -> bool:
        """Waits (at most `timeout`) for the settlements of `key` in flight now; True when done."""
        tasks = self._deliveries.get(key)
        if not tasks:
            return True
        _, left = await asyncio.wait(set(tasks), timeout=timeout)
        return not left

    def in_flight(self, key: str | None = None) -> int:
        """Background deliveries running now (for `key`, or all)."""
        if key is not None:
            return len(self._deliveries.get(key, ()))
        return sum(len(t) for t in self._deliveries.values())

    async def _write_ahead(self, s: Settlement, timeout: float) -> list[Part]:
        parts: list[tuple[str, bytes]] = []
        messages: list[Any] = []
        if s.reservation_id:
            if s.commit is not None:
                commit = quota_pb2.CommitReservationRequest()
                commit.CopyFrom(s.commit)
                commit.reservation_id = s.reservation_id
                parts.append((COMMIT, commit.SerializeToString()))
                messages.append(commit)
            else:
                release = quota_pb2.ReleaseReservationRequest(reservation_id=s.reservation_id)
                parts.append((RELEASE, release.SerializeToString()))
                messages.append(release)
        if s.record is not None:
            parts.append((RECORD, s.record.SerializeToString()))
            messages.append(s.record)
        if not parts:
            return []
        # In-flight parts are not due for replay until this call has had its chance.
        hold_until = time.time() + timeout + self._retry_interval
        ids: list[int] = await self._outbox.call(outbox_rows.insert, parts, hold_until)
        self._pending.update(ids)
        self._in_flight.update(ids)
        return [
            Part(row_id, kind, payload, message=message)
            for row_id, (kind, payload), message in zip(ids, parts, messages, strict=True)
        ]

    async def _deliver_all(
        self, written: list[Part], timeout: float
    ) -> metering_pb2.UsageRecord | None:
        ids = [p.row_id for p in written]
        try:
            results = await asyncio.gather(
                *(self._deliver(part, timeout) for part in written), return_exceptions=True
            )
        finally:
            self._in_flight.difference_update(ids)
        record: metering_pb2.UsageRecord | None = None
        for result in results:
            if isinstance(result, metering_pb2.RecordUsageResponse):
                record = result.record
            elif isinstance(result, BaseException) and not isinstance(result, grpc.RpcError):
                log.error("settlement part failed unexpectedly", exc_info=result)
        if self._pending.intersection(ids):
            self._wake.set()
        return record

    async def _deliver(self, part: Part, timeout: float) -> Any:
        try:
            response = await self._batcher.send(part, timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            detail = f"{code.name}: {err.details() if hasattr(err, 'details') else err}"
            if code in RETRYABLE:
                backoff = min(MAX_BACKOFF, self._retry_interval * (2 ** min(part.attempts, 10)))
                self._outbox.submit(outbox_rows.defer, part.row_id, time.time() + backoff, detail)
                log.warning(
                    "settlement parked for retry",
                    extra={"kind": part.kind, "code": code.name, "attempts": part.attempts + 1},
                )
            else:
                self._outbox.submit(outbox_rows.bury, part.row_id, detail)
                self._pending.discard(part.row_id)
                log.error(
                    "settlement refused for good; kept as a dead letter",
                    extra={"kind": part.kind, "code": code.name, "error": detail},
                )
            raise
        # Not awaited: a part delivered but still in the outbox is only sent again (idempotent).
        self._outbox.submit(outbox_rows.delete, part.row_id)
        self._pending.discard(part.row_id)
        return response

    async def _replay_forever(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.replay_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox replay failed; will retry")

    async def replay_due(self) -> int:
        """Sends every part that is due now; returns how many were delivered."""
        due: list[Part] = await self._outbox.call(outbox_rows.due, time.time())
        due = [p for p in due if p.row_id not in self._in_flight and p.row_id in self._pending]
        if not due:
            return 0
        ids = [p.row_id for p in due]
        self._in_flight.update(ids)
        try:
            results = await asyncio.gather(
                *(self._deliver(p, self._replay_timeout) for p in due), return_exceptions=True
            )
        finally:
            self._in_flight.difference_update(ids)
        delivered = sum(1 for r in results if not isinstance(r, BaseException))
        if delivered:
            log.info("outbox replayed", extra={"delivered": delivered, "left": self.pending()})
        return delivered
