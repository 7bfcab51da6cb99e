"""What a result store keeps and the protocol every store implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware."""


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredResult:
    """A finished request as stored: what the Router answered and the images it delivered."""

    response: bytes
    """The serialized response, exactly as put."""
    images: list[bytes]
    """The images' bytes, in the order they were put."""
    created_at: datetime
    """When the first successful put stored it (UTC)."""
    expires_at: datetime
    """From this instant on the result counts as absent and `sweep` deletes it (UTC)."""


class ResultCorruptedError(Exception):
    """A stored result whose bytes do not match its manifest (a disk or bucket was tampered with
    or damaged); never raised for a result that is merely absent, expired or half-written."""


class ResultStore(Protocol):
    """Durable, immutable results keyed by (tenant_id, request_id), shared by several processes.

    Writes are atomic: a reader sees a whole result or none. A result, once stored, never
    changes until it expires: a second put of the same key is a no-op (whatever its content).
    """

    async def put(
        self,
        tenant_id: str,
        request_id: str,
        response: bytes,
        images: list[bytes],
        *,
        expires_at: datetime,
    ) -> None:
        """Stores a result unless one is stored already (then the first one stays)."""
        ...

    async def get(self, tenant_id: str, request_id: str) -> StoredResult | None:
        """The stored result, or None when there is none or it has expired."""
        ...

    async def sweep(self, now: datetime) -> int:
        """Deletes the results expired at `now` (and leftovers of interrupted puts); how many
        results it deleted."""
        ...

    async def close(self) -> None:
        """Releases what the store holds; the data stays."""
        ...


def require_aware(value: datetime, name: str) -> datetime:
    """`value` in UTC; ValueError when it has no timezone (its meaning would depend on the host)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)
