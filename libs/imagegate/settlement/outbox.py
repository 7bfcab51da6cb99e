"""The SQLite outbox: one writer thread applying queued operations in group commits."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegate.settlement.outbox_rows import SCHEMA


class Outbox:
    """The SQLite outbox, written by one thread that applies queued operations in batches.

    Every operation queued while the previous batch ran is applied in one transaction (group
    commit), so a burst of settlements costs one WAL append, not one per part. An awaited
    operation finding the connection free runs at once on the caller's thread instead (tens of
    microseconds, less than the two thread hand-offs); the WAL is checkpointed only by the
    outbox thread, so the caller's thread never pays an fsync.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ops: queue.SimpleQueue[tuple[Any, tuple[Any, ...], Reply | None] | None] = (
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
        db.execute(SCHEMA)
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
        self._ops.put((fn, args, Reply(loop, future)))
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
                batch: list[tuple[Any, tuple[Any, ...], Reply | None] | None] = []
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
        self, db: sqlite3.Connection, batch: list[tuple[Any, tuple[Any, ...], Reply | None]]
    ) -> None:
        if not batch:
            return
        results: list[tuple[Reply | None, Any, BaseException | None]] = []
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
class Reply:
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
