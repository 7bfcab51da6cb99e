"""Reserve rounds: a lone reserve goes as ReserveQuota, reserves that wait together as one batch."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from imagegate.grpckit.batch import MAX_BATCH, NO_BATCH_CODES, ItemRpcError, stop_batching
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

log = logging.getLogger("services.router")

# A reserve call out this long is stuck, not slow (they take milliseconds): reserves waiting
# behind it go in a round of their own instead of waiting for it up to their deadlines.
STALL_SECONDS = 1.0
# Most reserve calls on their way at once: one, plus one for each call that got stuck.
MAX_CALLS = 4


@dataclass
class _Waiting:
    """One request's reserve waiting for a round, with the context its call belongs to."""

    request: quota_pb2.ReserveQuotaRequest
    deadline: float
    future: asyncio.Future[quota_pb2.ReserveQuotaResponse]
    context: contextvars.Context


class ReserveBatcher:
    """Sends the Router's reserves to Quota in rounds.

    One call is on its way to Quota at a time. A reserve that finds none goes at once as its own
    ReserveQuota, from its request's task (a lone request pays nothing extra). Reserves arriving
    meanwhile wait; when the call ends they go in a round: one alone as ReserveQuota in its
    request's trace, two or more as one BatchReserveQuota (one round trip, one Quota
    transaction) in a span of its own linked to every request's span. Rounds grow with the load;
    each reserve keeps its own deadline, and gets its own result or error, as if sent alone.

    A call out for STALL_SECONDS is taken for stuck (a hung connection, a Quota replica that
    stopped answering): what waits behind it goes in a new round beside it, up to MAX_CALLS
    calls, so one stuck call delays the others by about a second instead of its whole timeout.
    """

    def __init__(
        self,
        quota: quota_pb2_grpc.QuotaServiceStub,
        tracer: trace.Tracer,
        *,
        enabled: bool = True,
    ) -> None:
        self._quota = quota
        self._tracer = tracer
        self._waiting: list[_Waiting] = []
        self._out: dict[object, float] = {}
        """Reserve calls (lone ones and rounds) on their way to Quota: when each left."""
        self._rounds: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._reported: set[object] = set()
        """Stuck calls already logged (one warning per stuck call)."""
        self._batching = enabled
        self._batch_failures = 0
        self.batch_calls = 0
        """BatchReserveQuota calls made (for tests and measurement)."""
        self.batched = 0
        """Reserves sent inside those calls."""

    async def reserve(
        self, request: quota_pb2.ReserveQuotaRequest, timeout: float
    ) -> quota_pb2.ReserveQuotaResponse:
        """ReserveQuota's answer for `request`, or its error raised (a grpc.RpcError)."""
        if not self._batching:
            return await self._quota.ReserveQuota(request, timeout=timeout)
        loop = asyncio.get_running_loop()
        if not self._out:
            # Nothing on its way to Quota: this reserve goes at once, from its own task.
            token = object()
            self._out[token] = loop.time()
            try:
                return await self._quota.ReserveQuota(request, timeout=timeout)
            finally:
                self._done(token)
        future: asyncio.Future[quota_pb2.ReserveQuotaResponse] = loop.create_future()
        waiting = _Waiting(request, loop.time() + timeout, future, contextvars.copy_context())
        self._waiting.append(waiting)
        timer = loop.call_later(timeout, _expire, future)
        self._start_round()
        try:
            return await future
        finally:
            timer.cancel()

    def _start_round(self) -> None:
        """Sends what waits in a round of its own, unless a call that is not stuck will."""
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        youngest = max(self._out.values(), default=None)
        if youngest is not None and now - youngest < STALL_SECONDS:
            # A call on its way sends what waits when it ends; look again if it gets stuck.
            if self._watchdog is None:
                self._watchdog = loop.call_at(youngest + STALL_SECONDS, self._on_stall)
            return
        if len(self._out) >= MAX_CALLS:
            return  # every call is stuck: what waits keeps its own deadline
        unreported = self._out.keys() - self._reported
        if unreported:
            self._reported |= unreported
            log.warning(
                "a reserve call to Quota is stuck; sending the reserves behind it beside it",
                extra={"stuck_calls": len(self._out), "waiting": len(self._waiting)},
            )
        token = object()
        self._out[token] = now
        # A context of its own: the round serves many requests, none of them its parent.
        task = loop.create_task(self._run_rounds(token), context=contextvars.Context())
        self._rounds.add(task)
        task.add_done_callback(self._rounds.discard)

    def _on_stall(self) -> None:
        self._watchdog = None
        self._start_round()

    async def close(self) -> None:
        """Stops the rounds; reserves still waiting fail as CANCELLED."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for task in list(self._rounds):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for w in self._waiting:
            w.future.cancel()
        self._waiting.clear()

    async def _run_rounds(self, token: object) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = [w for w in self._waiting[:MAX_BATCH] if not w.future.done()]
                del self._waiting[:MAX_BATCH]
                self._out[token] = loop.time()
                if len(batch) == 1 or (batch and not self._batching):
                    await asyncio.gather(*(self._send_alone(w) for w in batch))
                elif batch:
                    await self._send_batch(batch)
        finally:
            self._done(token)

    def _done(self, token: object) -> None:
        """A call came back: what waits goes now."""
        del self._out[token]
        self._reported.discard(token)
        self._start_round()

    async def _send_alone(self, w: _Waiting) -> None:
        timeout = max(0.001, w.deadline - asyncio.get_running_loop().time())
        try:
            # Made inside the request's own context, so its client span joins the request's trace.
            call = w.context.run(self._quota.ReserveQuota, w.request, timeout=timeout)
            response = await call
        except grpc.RpcError as err:
            _settle(w, error=err)
            return
        except Exception as exc:  # never leave a request waiting on a round that broke
            _settle(w, error=exc)
            return
        _settle(w, response=response)

    async def _send_batch(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(0.001, max(w.deadline for w in batch) - loop.time())
        spans = [w.context.run(trace.get_current_span) for w in batch]
        links = [
            trace.Link(sp.get_span_context()) for sp in spans if sp.get_span_context().is_valid
        ]
        with self._tracer.start_as_current_span(
            "quota.batch_reserve",
            context=otel_context.Context(),
            links=links,
            attributes={"imagegate.batch_size": len(batch)},
        ) as round_span:
            # The request's own trace says where its reserve went (Jaeger shows links only on
            # the linking span).
            round_trace = f"{round_span.get_span_context().trace_id:032x}"
            for sp in spans:
                if sp.is_recording():
                    sp.add_event(
                        "quota reserve sent in a batch",
                        {
                            "imagegate.batch_trace_id": round_trace,
                            "imagegate.batch_size": len(batch),
                        },
                    )
            try:
                self.batch_calls += 1
                self.batched += len(batch)
                answer = await self._quota.BatchReserveQuota(
                    quota_pb2.BatchReserveQuotaRequest(requests=[w.request for w in batch]),
                    timeout=timeout,
                )
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
                if code in NO_BATCH_CODES:
                    # The round is resent as single calls, which is safe: a reserve is idempotent
                    # on (tenant, request_id) and carries its claim, so a resend finds its hold.
                    self._batch_failures += 1
                    if stop_batching(code, self._batch_failures):
                        log.warning(
                            "BatchReserveQuota refused; sending single reserves from now on",
                            extra={"code": code.name},
                        )
                        self._batching = False
                    await asyncio.gather(*(self._send_alone(w) for w in batch))
                    return
                for w in batch:
                    _settle(w, error=err)
                return
            except Exception as exc:
                log.error("batch reserve failed unexpectedly", exc_info=exc)
                for w in batch:
                    _settle(w, error=exc)
                return
        self._batch_failures = 0
        results = list(answer.results)
        if len(results) != len(batch):
            bad = ItemRpcError(
                grpc.StatusCode.INTERNAL, f"{len(results)} results for {len(batch)} reserves"
            )
            for w in batch:
                _settle(w, error=bad)
            return
        for w, result in zip(batch, results, strict=True):
            if result.HasField("error"):
                _settle(w, error=ItemRpcError.of(result.error))
            else:
                _settle(w, response=result.response)


def _settle(
    w: _Waiting,
    *,
    response: quota_pb2.ReserveQuotaResponse | None = None,
    error: BaseException | None = None,
) -> None:
    """Hands one reserve its result, unless its request stopped waiting (the Router releases
    such a request's hold by request_id, so a hold that lands late is not kept)."""
    if w.future.done():
        return
    if error is not None:
        w.future.set_exception(error)
    else:
        w.future.set_result(response)  # type: ignore[arg-type]


def _expire(future: asyncio.Future[quota_pb2.ReserveQuotaResponse]) -> None:
    if not future.done():
        future.set_exception(
            ItemRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "reserve deadline exceeded")
        )
