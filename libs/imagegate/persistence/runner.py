"""Runs short transactions off the event loop: one writer thread for SQLite, a pool for PostgreSQL.

SQLite allows one writer at a time, so every transaction of a store runs on ONE dedicated thread
with ONE long-lived connection: nothing in this process ever waits in SQLite's busy handler.
PostgreSQL gets `threads` worker threads, each with its own long-lived connection.

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
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine

_T = TypeVar("_T")


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
        if self._conn is not None:
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
        workers = 1 if self.sqlite else max(1, threads)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fairies: list[Any] = []
        self._integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError

    @property
    def integrity_error(self) -> type[Exception]:
        """The driver's IntegrityError (unique or foreign key violation)."""
        return self._integrity_error

    def sql(self, text: str) -> str:
        """A statement written with `?` placeholders, in the driver's parameter style."""
        return text if self.sqlite else text.replace("?", "%s")

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs fn(*args) on a worker thread, with the caller's context (trace parent)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, ctx.run, fn, *args)

    def close(self) -> None:
        """Stops the workers and returns their connections."""
        self._executor.shutdown(wait=True)
        with self._lock:
            fairies, self._fairies = self._fairies, []
        for fairy in fairies:
            with contextlib.suppress(Exception):  # best effort on shutdown
                fairy.close()

    def _traced(self) -> bool:
        dispatch = self.engine.dispatch
        return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    def _fairy(self) -> Any:
        fairy = getattr(self._local, "fairy", None)
        if fairy is None or fairy.dbapi_connection is None:
            fairy = self.engine.raw_connection()
            self._local.fairy = fairy
            self._local.cursor = cast(Any, fairy.dbapi_connection).cursor()
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
        try:
            if self.sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            yield Tx(cursor=cursor)
            if self.sqlite:
                cursor.execute("COMMIT")
            else:
                dbapi.commit()
        except BaseException:
            try:
                if self.sqlite:
                    if dbapi.in_transaction:
                        cursor.execute("ROLLBACK")
                else:
                    dbapi.rollback()
            except Exception:  # broken connection: replace it next time
                self._drop(fairy)
            raise
