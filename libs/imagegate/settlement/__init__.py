"""Router-side settlement (quota commit or release, usage record) through a durable outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imagegate.grpckit.batch import MAX_BATCH
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

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# A whole batch call failing with these may mean "no batch RPC here": fall back to single calls.
_NO_BATCH = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL})

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
    message: Any = None
    """The request itself when this process built it (saves parsing `payload` back)."""


def _message(part: _Part, cls: Any) -> Any:
    return part.message if part.message is not None else cls.FromString(part.payload)


class _Outbox:
    """The SQLite outbox, written by one thread that applies queued operations in batches.

    Every operation queued while the previous batch ran is applied in one transaction (group
    commit), so a burst of settlements costs one WAL append, not one per part. An awaited
    operation finding the connection free runs at once on the caller's thread instead (tens of
    microseconds, less than the two thread hand-offs); the WAL is checkpointed only by the
    outbox thread, so the caller's thread never pays an fsync.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ops: queue.SimpleQueue[tuple[Any, tuple[Any, ...], _Reply | None] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._commits = 0
        # Operations queued (written by the event loop only) and applied (outbox thread only):
        # equal means nothing queued is waiting, so an inline call keeps the queue's order.
        self._enqueued = 0
        self._applied = 0
        self.pending_at_open: set[int] = set()

    def open(self) -> None:
        """Opens (creating) the database and starts the writer thread."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit is in the log before it returns, so a settlement the
        # caller was told about survives a crash of this process; only an OS crash or power cut
        # can lose the last commits (FULL would fsync every batch, ~4x fewer per second).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(_SCHEMA)
        # Whatever an earlier process left is due now: nobody is sending it any more.
        db.execute("UPDATE outbox SET next_at = 0 WHERE dead = 0")
        self.pending_at_open = {
            row[0] for row in db.execute("SELECT id FROM outbox WHERE dead = 0")
        }
        self._db = db
        self._thread = threading.Thread(
            target=self._run, args=(db,), name="settler-outbox", daemon=True
        )
        self._thread.start()

    def submit(self, fn: Any, *args: Any) -> None:
        """Queues `fn(db, *args)` without waiting for it."""
        self._enqueued += 1
        self._ops.put((fn, args, None))

    async def call(self, fn: Any, *args: Any) -> Any:
        """Runs `fn(db, *args)` now when the connection is free, else queues it; its result."""
        db = self._db
        if db is not None and self._lock.acquire(blocking=False):
            try:
                if self._applied == self._enqueued:
                    return self._apply_one(db, fn, args)
            finally:
                self._lock.release()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._enqueued += 1
        self._ops.put((fn, args, _Reply(loop, future)))
        return await future

    def close(self) -> None:
        """Applies everything queued, then stops the thread and closes the database."""
        if self._thread is not None:
            self._ops.put(None)
            self._thread.join()
            self._thread = None

    def _run(self, db: sqlite3.Connection) -> None:
        checkpointed = 0
        try:
            while True:
                batch: list[tuple[Any, tuple[Any, ...], _Reply | None] | None] = []
                with contextlib.suppress(queue.Empty):
                    batch.append(self._ops.get(timeout=1.0))
                    while True:
                        batch.append(self._ops.get_nowait())
                ops = [op for op in batch if op is not None]
                with self._lock:
                    self._apply(db, ops)
                    self._applied += len(ops)
                    # Checkpoint after many commits, or when idle after writes: never inline.
                    if self._commits != checkpointed and (
                        not batch or self._commits - checkpointed >= 200
                    ):
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                        checkpointed = self._commits
                if None in batch:
                    return
        finally:
            with self._lock:
                self._db = None
                db.close()

    def _apply_one(self, db: sqlite3.Connection, fn: Any, args: tuple[Any, ...]) -> Any:
        db.execute("BEGIN IMMEDIATE")
        try:
            value = fn(db, *args)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._commits += 1
        return value

    def _apply(
        self, db: sqlite3.Connection, batch: list[tuple[Any, tuple[Any, ...], _Reply | None]]
    ) -> None:
        if not batch:
            return
        results: list[tuple[_Reply | None, Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, args, reply in batch:
                try:
                    results.append((reply, fn(db, *args), None))
                except sqlite3.Error as err:
                    results.append((reply, None, err))
            db.execute("COMMIT")
            self._commits += 1
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            results = [(reply, None, err) for _, _, reply in batch]
        for reply, value, error in results:
            if reply is not None:
                reply.send(value, error)


@dataclass
class _Reply:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]

    def send(self, value: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self._set, value, error)

    def _set(self, value: Any, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(value)


class _ItemError(grpc.RpcError):
    """One batch item's refusal, shaped like the failed single call it stands for."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self._code = code
        self._details = f"{reason}: {message}" if reason else message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _item_error(error: Any) -> _ItemError:
    return _ItemError(_CODES.get(error.code, grpc.StatusCode.UNKNOWN), error.reason, error.message)


@dataclass
class _Waiting:
    part: _Part
    timeout: float
    future: asyncio.Future[Any]


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
        self._outbox = _Outbox(Path(outbox_path))
        self._retry_interval = retry_interval
        self._replay_timeout = replay_timeout
        self._pending: set[int] = set()
        self._in_flight: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._deliveries: dict[str, set[asyncio.Task[Any]]] = {}
        self._waiting: dict[str, list[_Waiting]] = {COMMIT: [], RECORD: []}
        self._rounds: dict[str, asyncio.Task[None]] = {}
        self._batching: dict[str, bool] = {COMMIT: True, RECORD: True}
        self._batch_failures: dict[str, int] = {COMMIT: 0, RECORD: 0}
        self.batch_calls: dict[str, int] = {COMMIT: 0, RECORD: 0}
        """Batch RPCs sent per kind (for tests and measurement)."""

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
        rounds = list(self._rounds.values())
        for r in rounds:
            r.cancel()
        for r in rounds:
            with contextlib.suppress(asyncio.CancelledError):
                await r
        for waiting in self._waiting.values():
            for w in waiting:
                w.future.cancel()
            waiting.clear()
        await asyncio.to_thread(self._outbox.close)

    def pending(self) -> int:
        """Parts written but not yet delivered (dead letters excluded)."""
        return len(self._pending)

    async def dead_letters(self) -> int:
        """Parts a receiver refused for good."""
        return int(
            await self._outbox.call(
                lambda db: db.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()[0]
            )
        )

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

    async def settle_in_background(self, s: Settlement, *, key: str, timeout: float) -> None:
        """Writes the settlement ahead durably, then delivers it without the caller waiting.

        Returns once the parts are in the outbox (a crash from here on loses nothing). Delivery
        runs in a task tracked under `key` (the tenant), so `wait_settled(key)` can hold a read
        back until this tenant's settlements have reached Quota and Metering.
        """
        written = await self._write_ahead(s, timeout)
        if not written:
            return
        task = asyncio.create_task(self._deliver_all(written, timeout))
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

    async def _write_ahead(self, s: Settlement, timeout: float) -> list[_Part]:
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
        ids: list[int] = await self._outbox.call(self._insert, parts, hold_until)
        self._pending.update(ids)
        self._in_flight.update(ids)
        return [
            _Part(row_id, kind, payload, message=message)
            for row_id, (kind, payload), message in zip(ids, parts, messages, strict=True)
        ]

    async def _deliver_all(
        self, written: list[_Part], timeout: float
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

    async def _deliver(self, part: _Part, timeout: float) -> Any:
        try:
            response = await self._send(part, timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            detail = f"{code.name}: {err.details() if hasattr(err, 'details') else err}"
            if code in RETRYABLE:
                backoff = min(MAX_BACKOFF, self._retry_interval * (2 ** min(part.attempts, 10)))
                self._outbox.submit(self._defer, part.row_id, time.time() + backoff, detail)
                log.warning(
                    "settlement parked for retry",
                    extra={"kind": part.kind, "code": code.name, "attempts": part.attempts + 1},
                )
            else:
                self._outbox.submit(self._bury, part.row_id, detail)
                self._pending.discard(part.row_id)
                log.error(
                    "settlement refused for good; kept as a dead letter",
                    extra={"kind": part.kind, "code": code.name, "error": detail},
                )
            raise
        # Not awaited: a part delivered but still in the outbox is only sent again (idempotent).
        self._outbox.submit(self._delete, part.row_id)
        self._pending.discard(part.row_id)
        return response

    async def _send(self, part: _Part, timeout: float) -> Any:
        if part.kind in self._waiting and self._batching[part.kind]:
            return await self._send_batched(part, timeout)
        return await self._send_one(part, timeout)

    async def _send_batched(self, part: _Part, timeout: float) -> Any:
        """Queues `part` for the next delivery round of its kind; its own call's result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[part.kind].append(_Waiting(part, timeout, future))
        if part.kind not in self._rounds:
            task = asyncio.create_task(self._run_rounds(part.kind), name=f"settler-{part.kind}")
            self._rounds[part.kind] = task
        return await future

    async def _run_rounds(self, kind: str) -> None:
        try:
            waiting = self._waiting[kind]
            while waiting:
                batch = [w for w in waiting[:MAX_BATCH] if not w.future.done()]
                del waiting[:MAX_BATCH]
                if len(batch) == 1:
                    # A lone part goes as its own call: same cost, and it stays in its
                    # request's trace under the single RPC's name.
                    await self._send_alone(batch[0])
                elif batch:
                    await self._send_round(kind, batch)
        finally:
            self._rounds.pop(kind, None)

    async def _send_round(self, kind: str, batch: list[_Waiting]) -> None:
        """One batch call; every waiting part gets its item's result or the call's error."""
        timeout = max(w.timeout for w in batch)
        try:
            if kind == COMMIT:
                self.batch_calls[kind] += 1
                commits = await self._quota.BatchCommitReservations(
                    quota_pb2.BatchCommitReservationsRequest(
                        requests=[
                            _message(w.part, quota_pb2.CommitReservationRequest) for w in batch
                        ]
                    ),
                    timeout=timeout,
                )
                results: list[Any] = list(commits.results)
            else:
                self.batch_calls[kind] += 1
                records = await self._metering.BatchRecordUsage(
                    metering_pb2.BatchRecordUsageRequest(
                        requests=[_message(w.part, metering_pb2.RecordUsageRequest) for w in batch]
                    ),
                    timeout=timeout,
                )
                results = list(records.results)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            if code in _NO_BATCH:
                # The receiver may lack the batch RPC (an older build answers UNIMPLEMENTED; a
                # servicer inheriting the generated stub method fails with INTERNAL): this
                # round goes out as single calls (idempotent, so a resend is safe), and after
                # repeated failures of the batch call itself, every later round too.
                self._batch_failures[kind] += 1
                if code == grpc.StatusCode.UNIMPLEMENTED or self._batch_failures[kind] >= 3:
                    log.warning(
                        "batch RPC refused; sending single calls from now on",
                        extra={"kind": kind, "code": code.name},
                    )
                    self._batching[kind] = False
                await asyncio.gather(*(self._send_alone(w) for w in batch))
                return
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(err)
            return
        except AttributeError:
            # A stub without the batch method (an older client library): single calls.
            self._batching[kind] = False
            await asyncio.gather(*(self._send_alone(w) for w in batch))
            return
        except Exception as exc:
            log.error("batch delivery failed unexpectedly", exc_info=exc)
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        except BaseException:
            for w in batch:
                w.future.cancel()
            raise
        self._batch_failures[kind] = 0
        if len(results) != len(batch):
            bad = _ItemError(
                grpc.StatusCode.INTERNAL, "", f"{len(results)} results for {len(batch)} items"
            )
            results = [None] * len(batch)
        for w, result in zip(batch, results, strict=True):
            if w.future.done():
                continue
            if result is None:
                w.future.set_exception(bad)
            elif result.HasField("error"):
                w.future.set_exception(_item_error(result.error))
            elif kind == COMMIT:
                w.future.set_result(
                    quota_pb2.CommitReservationResponse(reservation=result.reservation)
                )
            else:
                w.future.set_result(
                    metering_pb2.RecordUsageResponse(record=result.record, created=result.created)
                )

    async def _send_alone(self, w: _Waiting) -> None:
        try:
            response = await self._send_one(w.part, w.timeout)
        except Exception as err:
            if not w.future.done():
                w.future.set_exception(err)
            return
        if not w.future.done():
            w.future.set_result(response)

    async def _send_one(self, part: _Part, timeout: float) -> Any:
        if part.kind == COMMIT:
            return await self._quota.CommitReservation(
                _message(part, quota_pb2.CommitReservationRequest), timeout=timeout
            )
        if part.kind == RELEASE:
            return await self._quota.ReleaseReservation(
                _message(part, quota_pb2.ReleaseReservationRequest), timeout=timeout
            )
        return await self._metering.RecordUsage(
            _message(part, metering_pb2.RecordUsageRequest), timeout=timeout
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
        due: list[_Part] = await self._outbox.call(self._due, time.time())
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

    # ---- outbox operations (run on the outbox thread, inside its batch transaction) ----

    @staticmethod
    def _insert(
        db: sqlite3.Connection, parts: list[tuple[str, bytes]], next_at: float
    ) -> list[int]:
        now = time.time()
        ids: list[int] = []
        for kind, payload in parts:
            cur = db.execute(
                "INSERT INTO outbox (kind, payload, next_at, create_at) VALUES (?, ?, ?, ?)",
                (kind, payload, next_at, now),
            )
            ids.append(int(cur.lastrowid or 0))
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
