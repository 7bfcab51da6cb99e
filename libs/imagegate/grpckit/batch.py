"""Batch RPC helpers: bounded batch size, items run concurrently with per-key ordering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2

from imagegate.grpckit.errors import CODE_BY_NUMBER, FieldViolation, invalid_argument

In = TypeVar("In")
Out = TypeVar("Out")

MAX_BATCH = 256
"""Most items one batch RPC accepts."""


# A batch call failing with these may mean "no batch RPC here": an older receiver answers
# UNIMPLEMENTED; a servicer inheriting the generated stub method fails with INTERNAL.
NO_BATCH_CODES = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL})
# Batch calls failing in a row with INTERNAL before a sender stops batching for good.
MAX_BATCH_FAILURES = 3


def stop_batching(code: grpc.StatusCode, failures_in_a_row: int) -> bool:
    """Whether a sender whose batch call failed with `code` (the `failures_in_a_row`-th such
    failure) should send single calls from now on."""
    return code == grpc.StatusCode.UNIMPLEMENTED or failures_in_a_row >= MAX_BATCH_FAILURES


class ItemRpcError(grpc.RpcError):
    """One batch item's refusal, shaped like the failed single call it stands for: its code,
    message and google.rpc.Status details (read back by `parse_rpc_error`)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, status: status_pb2.Status | None = None
    ) -> None:
        super().__init__(message)
        self._code = code
        self._message = message
        self._status = status

    @classmethod
    def of(cls, error: Any) -> ItemRpcError:
        """From a batch result's ItemError (quota or metering)."""
        code = CODE_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
        details = getattr(error, "details", ())
        if details:
            status = status_pb2.Status(code=error.code, message=error.message, details=details)
            return cls(code, error.message, status)
        # No details to carry the reason: keep it readable in the message.
        return cls(code, f"{error.reason}: {error.message}" if error.reason else error.message)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        if self._status is None:
            return ()
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def check_batch_size(count: int, *, domain: str) -> None:
    """INVALID_ARGUMENT unless 1 to MAX_BATCH items."""
    if not 1 <= count <= MAX_BATCH:
        raise invalid_argument(
            [FieldViolation("requests", f"1 to {MAX_BATCH} items")], domain=domain
        )


async def run_items(
    items: Sequence[In],
    key: Callable[[In], str],
    handle: Callable[[In], Awaitable[Out]],
) -> list[Out | Exception]:
    """Runs every item through `handle` concurrently; results in request order.

    Items with the same key run one after another in request order (an idempotent replay inside
    a batch then sees the first one's effect); different keys run concurrently, so the store's
    group commit takes them in one transaction. An item's exception is its result.
    """
    results: list[Out | Exception] = [Exception("not run")] * len(items)
    chains: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        chains.setdefault(key(item), []).append(i)

    async def chain(indices: list[int]) -> None:
        for i in indices:
            try:
                results[i] = await handle(items[i])
            except Exception as err:  # one item's failure never fails the others
                results[i] = err

    await asyncio.gather(*(chain(indices) for indices in chains.values()))
    return results
