"""Router-side settlement of a request (quota commit or release, usage record) with a durable outbox.

Every part is written to a local SQLite outbox before it is sent (write-ahead), sent, and removed
once the dependency accepted it. A part that could not be delivered (dependency unavailable, timed
out, or this process crashed) stays in the outbox and is replayed in the background, after a
restart too. Delivery is at-least-once; both receivers are idempotent (CommitReservation and
ReleaseReservation on the reservation id, RecordUsage on (tenant, request_id)), so each settlement
takes effect exactly once. A part the receiver refuses for good (INVALID_ARGUMENT,
FAILED_PRECONDITION, ...) is kept as a dead letter for inspection and logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

log = logging.getLogger(__name__)

__all__ = ["Settlement", "Settler"]

COMMIT = "commit"
RELEASE = "release"
RECORD = "record"

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    create_at REAL NOT NULL
)
"""


@dataclass
class Settlement:
    """How one request ends: the quota side and the ledger side."""

    reservation_id: str
    """Reservation to commit or release; empty when no reservation was made."""
    commit: quota_pb2.CommitReservationRequest | None
    """Actual usage to charge; None releases the reservation."""
    record: metering_pb2.RecordUsageRequest | None
    """Usage record for Metering; None when there is nothing to record."""


@dataclass
class _Part:
    row_id: int
    kind: str
    payload: bytes
    attempts: int = 0


class Settler:
    """Settles requests against Quota and Metering, parking what cannot be delivered now."""

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
        self._path = Path(outbox_path)
        self._retry_interval = retry_interval
        self._replay_timeout = replay_timeout
        self._db: sqlite3.Connection | None = None
        # One thread owns the SQLite connection: no locking, no cross-thread use.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settler-outbox")
        self._pending: set[int] = set()
        self._in_flight: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ---- lifecycle ----

    async def start(self) -> None:
        """Opens the outbox and starts replaying whatever an earlier run left in it."""
        await self._db_call(self._open)
        self._task = asyncio.create_task(self._replay_forever(), name="settler-replay")
        if self._pending:
            log.info("outbox has undelivered settlements", extra={"count": len(self._pending)})
            self._wake.set()

    async def close(self) -> None:
        """Stops replaying and closes the outbox; undelivered parts stay for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._db_call(self._close_db)
        self._executor.shutdown(wait=True)

    def pending(self) -> int:
        """Parts written but not yet delivered (dead letters excluded)."""
        return len(self._pending)

    async def dead_letters(self) -> int:
        """Parts a receiver refused for good."""
        return await self._db_call(
            lambda db: db.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()[0]
        )

    # ---- settling ----

    async def settle(self, s: Settlement, *, timeout: float) -> metering_pb2.UsageRecord | None:
        """Commits (or releases) and records concurrently; never raises for dependency outages.

        Returns the stored usage record when Metering accepted it now; None when there was no
        record or it was parked in the outbox (it will be delivered later). The quota part is
        independent: when it could not be delivered it is parked too.
        """
        parts: list[tuple[str, bytes]] = []
        if s.reservation_id:
            if s.commit is not None:
                commit = quota_pb2.CommitReservationRequest()
                commit.CopyFrom(s.commit)
                commit.reservation_id = s.reservation_id
                parts.append((COMMIT, commit.SerializeToString()))
            else:
                release = quota_pb2.ReleaseReservationRequest(reservation_id=s.reservation_id)
                parts.append((RELEASE, release.SerializeToString()))
        if s.record is not None:
            parts.append((RECORD, s.record.SerializeToString()))
        if not parts:
            return None
        # In-flight parts are not due for replay until this call has had its chance.
        hold_until = time.time() + timeout + self._retry_interval
        ids = await self._db_call(self._insert, parts, hold_until)
        written = [
            _Part(row_id, kind, payload) for row_id, (kind, payload) in zip(ids, parts, strict=True)
        ]
        self._pending.update(ids)
        self._in_flight.update(ids)
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

    async def _deliver(self, part: _Part, timeout: float) -> Any:
        try:
            response = await self._send(part, timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            detail = f"{code.name}: {err.details() if hasattr(err, 'details') else err}"
            if code in RETRYABLE:
                backoff = min(MAX_BACKOFF, self._retry_interval * (2 ** min(part.attempts, 10)))
                await self._db_call(self._defer, part.row_id, time.time() + backoff, detail)
                log.warning(
                    "settlement parked for retry",
                    extra={"kind": part.kind, "code": code.name, "attempts": part.attempts + 1},
                )
            else:
                await self._db_call(self._bury, part.row_id, detail)
                self._pending.discard(part.row_id)
                log.error(
                    "settlement refused for good; kept as a dead letter",
                    extra={"kind": part.kind, "code": code.name, "error": detail},
                )
            raise
        await self._db_call(self._delete, part.row_id)
        self._pending.discard(part.row_id)
        return response

    async def _send(self, part: _Part, timeout: float) -> Any:
        if part.kind == COMMIT:
            return await self._quota.CommitReservation(
                quota_pb2.CommitReservationRequest.FromString(part.payload), timeout=timeout
            )
        if part.kind == RELEASE:
            return await self._quota.ReleaseReservation(
                quota_pb2.ReleaseReservationRequest.FromString(part.payload), timeout=timeout
            )
        return await self._metering.RecordUsage(
            metering_pb2.RecordUsageRequest.FromString(part.payload), timeout=timeout
        )

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
        due: list[_Part] = await self._db_call(self._due, time.time())
        due = [p for p in due if p.row_id not in self._in_flight]
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

    # ---- outbox (runs on the outbox thread) ----

    async def _db_call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._with_db, fn, args)

    def _with_db(self, fn: Any, args: tuple[Any, ...]) -> Any:
        if fn in (self._open, self._close_db):
            return fn(*args)
        assert self._db is not None, "Settler.start() was not awaited"
        return fn(self._db, *args)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a settlement the caller was told about survives a power cut, not only a crash.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute(_SCHEMA)
        # Whatever an earlier process left is due now: nobody is sending it any more.
        db.execute("UPDATE outbox SET next_at = 0 WHERE dead = 0")
        self._pending = {row[0] for row in db.execute("SELECT id FROM outbox WHERE dead = 0")}
        self._db = db

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @staticmethod
    def _insert(
        db: sqlite3.Connection, parts: list[tuple[str, bytes]], next_at: float
    ) -> list[int]:
        now = time.time()
        ids: list[int] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for kind, payload in parts:
                cur = db.execute(
                    "INSERT INTO outbox (kind, payload, next_at, create_at) VALUES (?, ?, ?, ?)",
                    (kind, payload, next_at, now),
                )
                ids.append(int(cur.lastrowid or 0))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids

    @staticmethod
    def _delete(db: sqlite3.Connection, row_id: int) -> None:
        db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    @staticmethod
    def _defer(db: sqlite3.Connection, row_id: int, next_at: float, error: str) -> None:
        db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
            (next_at, error[:500], row_id),
        )

    @staticmethod
    def _bury(db: sqlite3.Connection, row_id: int, error: str) -> None:
        db.execute(
            "UPDATE outbox SET dead = 1, attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], row_id),
        )

    @staticmethod
    def _due(db: sqlite3.Connection, now: float) -> list[_Part]:
        rows = db.execute(
            "SELECT id, kind, payload, attempts FROM outbox"
            " WHERE dead = 0 AND next_at <= ? ORDER BY id LIMIT 256",
            (now,),
        ).fetchall()
        return [_Part(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]
