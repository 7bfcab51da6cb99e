"""Runs short transactions off the event loop: one writer thread for SQLite, a pool for PostgreSQL.

SQLite allows one writer at a time, so every transaction of a store runs on ONE dedicated thread
with ONE long-lived connection: nothing in this process ever waits in SQLite's busy handler.
PostgreSQL gets `threads` worker threads, each with its own long-lived connection.

Group commit on SQLite: calls submitted with `batch=True` that are waiting together are run in
one BEGIN IMMEDIATE ... COMMIT, each inside its own SAVEPOINT (a failing call rolls back only
its own changes); their callers are answered only after the COMMIT, with one wake-up of the
event loop per batch. Calls that open other connections (admin paths through SQLAlchemy) are
never batched.

Hot paths use `Tx` with SQL strings written once (`?` placeholders, converted to the driver's
style by `DbRunner.sql`) and run straight on the DBAPI cursor, with no per-call statement
construction or compilation. When an engine has cursor-execute listeners (OpenTelemetry's
SQLAlchemy instrumentation), the same SQL runs through `Connection.exec_driver_sql` instead, so
every statement still gets its span.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine

_T = TypeVar("_T")
_MAX_BATCH = 64
# PostgreSQL advisory lock key that serializes `run_group` transactions (any fixed bigint).
_GROUP_LOCK = 0x1A6E6A7E
_STOP = object()


class _Job:
    """One call queued for the SQLite writer thread."""

    __slots__ = ("args", "batch", "ctx", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        batch: bool,
    ) -> None:
        self.fn = fn
        self.args = args
        self.ctx = contextvars.copy_context()
        self.loop = loop
        self.future = future
        self.batch = batch


def _deliver(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    for job, ok, value in outcomes:
        if job.future.cancelled():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)


class Tx:
    """One open transaction: run prepared SQL strings and read plain tuples."""

    __slots__ = ("_conn", "_cursor")

    def __init__(self, cursor: Any = None, conn: Connection | None = None) -> None:
        self._cursor = cursor
        self._conn = conn

    def _exec(self, sql: str, params: Sequence[Any]) -> Any:
        if self._conn is not None:
            return self._conn.exec_driver_sql(sql, tuple(params))
        self._cursor.execute(sql, params)
        return self._cursor

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first row (a tuple) or None."""
        row = self._exec(sql, params).fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row, as tuples."""
        return [tuple(r) for r in self._exec(sql, params).fetchall()]

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Runs one statement for each parameter row (executemany)."""
        if len(rows) == 1:
            self._exec(sql, rows[0])  # executemany of one row costs a pipeline on psycopg
        elif self._conn is not None:
            self._conn.exec_driver_sql(sql, [tuple(r) for r in rows])
        else:
            self._cursor.executemany(sql, rows)

    def rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs a statement without RETURNING; how many rows it changed."""
        return int(self._exec(sql, params).rowcount)


class DbRunner:
    """Worker threads with long-lived connections for one engine (see the module docstring)."""

    def __init__(self, engine: Engine, *, threads: int = 8, name: str = "db") -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.sqlite = self.dialect == "sqlite"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fairies: list[Any] = []
        self._integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError
        self._executor: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if self.sqlite:
            self._writer = threading.Thread(target=self._write_loop, name=name, daemon=True)
            self._writer.start()
        else:
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, threads), thread_name_prefix=name
            )

    @property
    def integrity_error(self) -> type[Exception]:
        """The driver's IntegrityError (unique or foreign key violation)."""
        return self._integrity_error

    def sql(self, text: str) -> str:
        """A statement written with `?` placeholders, in the driver's parameter style."""
        return text if self.sqlite else text.replace("?", "%s")

    async def run(self, fn: Callable[..., _T], *args: Any, batch: bool = False) -> _T:
        """Runs fn(*args) on a worker thread, with the caller's context (trace parent).

        batch=True: fn only uses `tx()` (no other connection), so on SQLite it may share one
        transaction with other waiting calls (group commit, see the module docstring)."""
        loop = asyncio.get_running_loop()
        if self._executor is not None:
            ctx = contextvars.copy_context()
            return await loop.run_in_executor(self._executor, ctx.run, fn, *args)
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Job(fn, args, loop, future, batch))
        return await future

    async def run_group(
        self, fn: Callable[[Any], _T], items: Sequence[Any]
    ) -> list[_T | Exception]:
        """fn(item) for every item, in request order; each item's exception is its result.

        PostgreSQL: one transaction for the whole group, each item in a savepoint of its own (a
        failing item rolls back alone), so one commit (one WAL flush) instead of one per item;
        groups run one at a time (an advisory lock), so they never deadlock each other.
        SQLite: batch calls, which the writer thread group-commits in the same way. fn must use
        only `tx()`. If the group's own BEGIN or COMMIT fails, every item gets that error (the
        caller may run them again one by one).
        """
        if self._executor is None or self._traced():

            async def one(item: Any) -> _T | Exception:
                try:
                    return await self.run(fn, item, batch=True)
                except Exception as err:
                    return err

            return list(await asyncio.gather(*(one(item) for item in items)))
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, ctx.run, self._group_sync, fn, items)

    def _group_sync(self, fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T | Exception]:
        fairy = self._fairy()
        cursor = self._local.cursor
        out: list[_T | Exception] = []
        try:
            cursor.execute("BEGIN")
            # Groups lock rows in the order of their items, so two groups could each hold a row
            # the other wants (a deadlock PostgreSQL breaks only after deadlock_timeout, 1 s).
            # One group at a time per database: each is short (one WAL flush for all its items),
            # and single-statement transactions, which lock one row, never form a cycle with it.
            cursor.execute(f"SELECT pg_advisory_xact_lock({_GROUP_LOCK})")
            self._local.batch = True
            try:
                for item in items:
                    try:
                        out.append(fn(item))
                    except Exception as err:  # this item's savepoint is already rolled back
                        out.append(err)
            finally:
                self._local.batch = False
            cursor.execute("COMMIT")
        except Exception as err:
            try:
                cursor.execute("ROLLBACK")
            except Exception:  # broken connection: replace it next time
                self._drop(fairy)
            return [err] * len(items)
        return out

    def close(self) -> None:
        """Stops the workers and returns their connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
        with self._lock:
            fairies, self._fairies = self._fairies, []
        for fairy in fairies:
            with contextlib.suppress(Exception):  # best effort on shutdown
                if not self.sqlite:
                    fairy.dbapi_connection.autocommit = False
                fairy.close()

    def _write_loop(self) -> None:
        held: Any = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is _STOP:
                return
            jobs = [job]
            if job.batch and not self._traced():
                while len(jobs) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP or not nxt.batch:
                        held = nxt
                        break
                    jobs.append(nxt)
            outcomes = self._run_one(job) if len(jobs) == 1 else self._run_batch(jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, bool, Any]]] = {}
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].loop, []).append(outcome)
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, items)

    @staticmethod
    def _run_one(job: _Job) -> list[tuple[_Job, bool, Any]]:
        try:
            return [(job, True, job.ctx.run(job.fn, *job.args))]
        except BaseException as err:
            return [(job, False, err)]

    def _run_batch(self, jobs: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        fairy = self._fairy()
        cursor = self._local.cursor
        outcomes: list[tuple[_Job, bool, Any]] = []
        try:
            cursor.execute("BEGIN IMMEDIATE")
            self._local.batch = True
            try:
                for job in jobs:
                    outcomes.extend(self._run_one(job))
            finally:
                self._local.batch = False
            cursor.execute("COMMIT")
        except BaseException as err:
            try:
                if fairy.dbapi_connection.in_transaction:
                    cursor.execute("ROLLBACK")
            except Exception:  # broken connection: replace it next time
                self._drop(fairy)
            return [(job, False, err) for job in jobs]
        return outcomes

    def _traced(self) -> bool:
        dispatch = self.engine.dispatch
        return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    def _fairy(self) -> Any:
        fairy = getattr(self._local, "fairy", None)
        if fairy is None or fairy.dbapi_connection is None:
            fairy = self.engine.raw_connection()
            dbapi = cast(Any, fairy.dbapi_connection)
            if not self.sqlite:
                # Autocommit: `tx` says BEGIN itself, and `one_shot` runs a single statement as
                # its own transaction in one round trip.
                dbapi.rollback()
                dbapi.autocommit = True
            self._local.fairy = fairy
            self._local.cursor = dbapi.cursor()
            with self._lock:
                self._fairies.append(fairy)
        return fairy

    def _drop(self, fairy: Any) -> None:
        self._local.fairy = None
        with self._lock:
            if fairy in self._fairies:
                self._fairies.remove(fairy)
        with contextlib.suppress(Exception):  # the connection is already broken
            fairy.invalidate()

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        """One transaction on this thread's connection (SQLite: BEGIN IMMEDIATE); commits on
        success, rolls back on any exception."""
        if self._traced():
            with self.engine.begin() as conn:
                yield Tx(conn=conn)
            return
        fairy = self._fairy()
        dbapi = fairy.dbapi_connection
        cursor = self._local.cursor
        if getattr(self._local, "batch", False):
            # Inside a group commit: this call's changes live in a savepoint.
            cursor.execute("SAVEPOINT op")
            try:
                yield Tx(cursor=cursor)
            except BaseException:
                cursor.execute("ROLLBACK TO op")
                cursor.execute("RELEASE op")
                raise
            cursor.execute("RELEASE op")
            return
        try:
            cursor.execute("BEGIN IMMEDIATE" if self.sqlite else "BEGIN")
            yield Tx(cursor=cursor)
            cursor.execute("COMMIT")
        except BaseException:
            try:
                if not self.sqlite or dbapi.in_transaction:
                    cursor.execute("ROLLBACK")
            except Exception:  # broken connection: replace it next time
                self._drop(fairy)
            raise

    @contextmanager
    def one_shot(self) -> Iterator[Tx]:
        """PostgreSQL only: each statement is its own transaction (autocommit), one round trip.
        For single statements that are atomic by themselves (e.g. a data-modifying CTE)."""
        if self.sqlite:
            raise RuntimeError("one_shot is for PostgreSQL; SQLite uses tx()")
        if self._traced():
            with self.engine.begin() as conn:
                yield Tx(conn=conn)
            return
        fairy = self._fairy()
        try:
            yield Tx(cursor=self._local.cursor)
        except BaseException:
            if getattr(fairy.dbapi_connection, "closed", False):
                self._drop(fairy)
            raise
