"""The outbox table: its schema, and the statements run inside the outbox's transactions."""

from __future__ import annotations

import sqlite3
import time

from imagegate.settlement.parts import Part

SCHEMA = """
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


def insert(db: sqlite3.Connection, parts: list[tuple[str, bytes]], next_at: float) -> list[int]:
    """Writes new parts, not due before `next_at`; their row ids."""
    now = time.time()
    ids: list[int] = []
    for kind, payload in parts:
        cur = db.execute(
            "INSERT INTO outbox (kind, payload, next_at, create_at) VALUES (?, ?, ?, ?)",
            (kind, payload, next_at, now),
        )
        ids.append(int(cur.lastrowid or 0))
    return ids


def delete(db: sqlite3.Connection, row_id: int) -> None:
    """Forgets a delivered part."""
    db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))


def defer(db: sqlite3.Connection, row_id: int, next_at: float, error: str) -> None:
    """Counts a failed attempt and holds the part until `next_at`."""
    db.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
        (next_at, error[:500], row_id),
    )


def bury(db: sqlite3.Connection, row_id: int, error: str) -> None:
    """Keeps a refused part as a dead letter, never sent again."""
    db.execute(
        "UPDATE outbox SET dead = 1, attempts = attempts + 1, last_error = ? WHERE id = ?",
        (error[:500], row_id),
    )


def due(db: sqlite3.Connection, now: float) -> list[Part]:
    """Live parts due at `now`, oldest first (at most 256)."""
    rows = db.execute(
        "SELECT id, kind, payload, attempts FROM outbox"
        " WHERE dead = 0 AND next_at <= ? ORDER BY id LIMIT 256",
        (now,),
    ).fetchall()
    return [Part(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]


def count_dead(db: sqlite3.Connection) -> int:
    """Parts a receiver refused for good."""
    return int(db.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()[0])
