"""Engine set-up for SQLite (WAL, BEGIN IMMEDIATE) and PostgreSQL (own schema), and migrations."""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Any constant works; it only has to be the same in every process migrating this schema.
_MIGRATION_LOCK_BASE = 0x1A6E_0000


def _lock_key(schema: str) -> int:
    return _MIGRATION_LOCK_BASE + zlib.crc32(schema.encode())


def make_engine(url: str, *, schema: str, pool_size: int = 8) -> Engine:
    """A synchronous engine tuned for short transactions run in worker threads.

    SQLite: WAL, synchronous=NORMAL, busy_timeout and BEGIN IMMEDIATE for every transaction, so a
    read that precedes a write can never fail with SQLITE_BUSY_SNAPSHOT. PostgreSQL: READ
    COMMITTED, tables in `schema` (set through search_path on every connection).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed.set(drivername="sqlite+pysqlite"),
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool if database in ("", ":memory:") else None,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Hand transaction control to SQLAlchemy so "begin" below can say IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}")
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return create_engine(
        parsed.set(drivername="postgresql+psycopg"),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"options": f"-csearch_path={schema}"},
    )


def quiet_alembic() -> None:
    """Raises the `alembic` logger to WARNING when nobody chose its level (DEBUG runs keep it)."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET and logging.getLogger().level > logging.DEBUG:
        alembic_log.setLevel(logging.WARNING)


def migrate(engine: Engine, *, script_location: str, schema: str, version_table: str) -> None:
    """Applies the Alembic migrations (idempotent; safe with several processes starting at once).

    Alembic's INFO lines ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.") are
    kept out of start-up output unless the `alembic` logger was configured on purpose.
    """
    quiet_alembic()
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("version_table", version_table)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Serialise concurrent starters: only one process runs the DDL, the rest find it done.
            conn.execute(text(f"SELECT pg_advisory_lock({_lock_key(schema)})"))
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"SELECT pg_advisory_unlock({_lock_key(schema)})"))
                conn.commit()
