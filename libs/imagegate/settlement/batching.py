"""Delivery of settlement parts: single calls, or batch RPCs for parts that wait together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from imagegate.grpckit.batch import MAX_BATCH, NO_BATCH_CODES, ItemRpcError, stop_batching
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.settlement.parts import COMMIT, RECORD, RELEASE, Part, message_of

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """A part waiting for a delivery round, and the future its sender awaits."""

    part: Part
    timeout: float
    future: asyncio.Future[Any]


class Batcher:
    """Sends parts to Quota and Metering; commits and usage records go in batches.

    A delivery round takes whatever parts of its kind are waiting when it starts (at most
    MAX_BATCH) and sends them in one call (BatchCommitReservations, BatchRecordUsage; a lone
    part as its single call); parts arriving meanwhile wait for the next round. Each item's
    result is handled as its own call's would be. A receiver without the batch RPCs
    (UNIMPLEMENTED) gets single calls from then on.
    """

    def __init__(
        self,
        quota: quota_pb2_grpc.QuotaServiceStub,
        metering: metering_pb2_grpc.MeteringServiceStub,
    ) -> None:
        self._quota = quota
        self._metering = metering
        self._waiting: dict[str, list[_Waiting]] = {COMMIT: [], RECORD: []}
        self._rounds: dict[str, asyncio.Task[None]] = {}
        self._batching: dict[str, bool] = {COMMIT: True, RECORD: True}
        self._batch_failures: dict[str, int] = {COMMIT: 0, RECORD: 0}
        self.batch_calls: dict[str, int] = {COMMIT: 0, RECORD: 0}
        """Batch RPCs sent per kind (for tests and measurement)."""

    async def send(self, part: Part, timeout: float) -> Any:
        """Delivers one part; the receiver's response to it, or its error raised."""
        if part.kind in self._waiting and self._batching[part.kind]:
            return await self._send_batched(part, timeout)
        return await self._send_one(part, timeout)

    async def close(self) -> None:
        """Stops the delivery rounds and cancels every part still waiting for one."""
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

    async def _send_batched(self, part: Part, timeout: float) -> Any:
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
                            message_of(w.part, quota_pb2.CommitReservationRequest) for w in batch
                        ]
                    ),
                    timeout=timeout,
                )
                results: list[Any] = list(commits.results)
            else:
                self.batch_calls[kind] += 1
                records = await self._metering.BatchRecordUsage(
                    metering_pb2.BatchRecordUsageRequest(
                        requests=[
                            message_of(w.part, metering_pb2.RecordUsageRequest) for w in batch
                        ]
                    ),
                    timeout=timeout,
                )
                results = list(records.results)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
            if code in NO_BATCH_CODES:
                # The receiver may lack the batch RPC (an older build answers UNIMPLEMENTED; a
                # servicer inheriting the generated stub method fails with INTERNAL): this
                # round goes out as single calls (idempotent, so a resend is safe), and after
                # repeated failures of the batch call itself, every later round too.
                self._batch_failures[kind] += 1
                if stop_batching(code, self._batch_failures[kind]):
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
            bad = ItemRpcError(
                grpc.StatusCode.INTERNAL, f"{len(results)} results for {len(batch)} items"
            )
            results = [None] * len(batch)
        for w, result in zip(batch, results, strict=True):
            if w.future.done():
                continue
            if result is None:
                w.future.set_exception(bad)
            elif result.HasField("error"):
                w.future.set_exception(ItemRpcError.of(result.error))
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

    async def _send_one(self, part: Part, timeout: float) -> Any:
        if part.kind == COMMIT:
            return await self._quota.CommitReservation(
                message_of(part, quota_pb2.CommitReservationRequest), timeout=timeout
            )
        if part.kind == RELEASE:
            return await self._quota.ReleaseReservation(
                message_of(part, quota_pb2.ReleaseReservationRequest), timeout=timeout
            )
        return await self._metering.RecordUsage(
            message_of(part, metering_pb2.RecordUsageRequest), timeout=timeout
        )
