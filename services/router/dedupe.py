"""Deduplication of a request_id across calls and replicas: replay, follow, or run it once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeAlias

from opentelemetry import trace

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError
from imagegate.quota.v1 import quota_pb2
from imagegate.router.v1 import router_pb2
from services.router.admission import Admitted
from services.router.events import EventSink
from services.router.generations import NO_FINGERPRINT, Generations
from services.router.idempotency import IdempotencyCache, Outcome, await_outcome

Response: TypeAlias = router_pb2.GenerateImageResponse

# How long a repeat of a finished (committed or released) id waits for the owner's stored outcome.
STORE_GRACE_SECONDS = 1.0


def replayed(response: Response) -> Response:
    """A copy of an earlier call's response marked as a replay (the stored one stays as it was)."""
    out = Response()
    out.CopyFrom(response)
    out.replayed = True
    return out


class Deduplicator:
    """In this replica's memory first (in flight, recent), then the shared result store."""

    def __init__(
        self,
        cache: IdempotencyCache,
        generations: Generations,
        settled: Callable[[str], Awaitable[None]],
    ) -> None:
        self.cache = cache
        self.generations = generations
        self._settled = settled
        self._background: set[asyncio.Task[None]] = set()

    async def once(
        self,
        admitted: Admitted,
        fp: bytes,
        events: EventSink | None,
        span: trace.Span,
        run: Callable[[], Awaitable[Response]],
    ) -> Response:
        """The earlier outcome of this (tenant, request_id) if there is one, else `run()`."""
        tenant, request_id = admitted.caller.tenant_id, admitted.request_id
        earlier = self.cache.lookup(tenant, request_id, fp)
        if earlier is not None:
            span.set_attribute("imagegate.idempotent_replay", True)
            replay = await await_outcome(earlier, admitted.deadline, request_id, events)
            await self._settled(tenant)
            return replayed(replay)
        # Not looked up in the shared store here: an id finished earlier (on another replica, or
        # here before a restart) still holds its reservation in Quota, so the reserve that `run`
        # makes answers with that claim and `follow` reads the store. New ids, nearly all of
        # them, skip a store read (a thread hop) that would find nothing.
        self.cache.begin(tenant, request_id, fp)
        outcome: Outcome = (None, None)
        try:
            outcome = (await run(), None)
            return outcome[0]  # type: ignore[return-value]
        except ImagegateError as err:
            outcome = (None, err)
            raise
        finally:
            if outcome == (None, None):
                self.cache.forget(tenant, request_id)
            else:
                self.cache.finish(tenant, request_id, outcome)

    async def stored(self, admitted: Admitted, fp: bytes, span: trace.Span) -> Response | None:
        """The stored outcome of this request_id when Quota could not say (fail-open)."""
        found = await self.generations.find(admitted.caller.tenant_id, admitted.request_id, fp)
        if found is None:
            return None
        span.set_attribute("imagegate.idempotent_replay", True)
        return found[0]

    async def follow(
        self, admitted: Admitted, reservation: quota_pb2.Reservation, fp: bytes
    ) -> Response:
        """Another call (any replica) claimed this request_id first: its outcome, when it has one."""
        tenant = admitted.caller.tenant_id
        if reservation.state == quota_pb2.RESERVATION_STATE_PENDING:
            return replayed(
                await self.generations.wait(tenant, admitted.request_id, fp, admitted.deadline)
            )
        found = await self.generations.find(tenant, admitted.request_id, fp)
        if found is not None:
            return replayed(found[0])
        # The owner stores its outcome just after its reply, and its commit may land first:
        # give a just-finished request a moment before calling the id spent.
        briefly = Deadline(min(admitted.deadline.at, Deadline.after(STORE_GRACE_SECONDS).at))
        try:
            return replayed(await self.generations.wait(tenant, admitted.request_id, fp, briefly))
        except ImagegateError as err:
            if err.reason != reasons.REQUEST_IN_PROGRESS:
                raise
        raise self.cache.spent_error(admitted.request_id, reservation)

    def keep(
        self, admitted: Admitted, fp: bytes | None, outcome: Response | ImagegateError
    ) -> None:
        """Stores the outcome once the reply has left (a follower polls for it; this replica's
        repeats are served from memory): the write and its fsync stay off the request's latency.
        A crash in between costs only the replay of a request whose caller has its answer."""
        tenant, request_id = admitted.caller.tenant_id, admitted.request_id
        if isinstance(outcome, ImagegateError):
            if fp is None:
                return
            work = self.generations.keep_failure(tenant, request_id, fp, outcome)
        else:
            work = self.generations.keep_success(tenant, request_id, fp or NO_FINGERPRINT, outcome)
        self._spawn(admitted.replied.then(work))

    async def close(self) -> None:
        """Waits (bounded) for outcomes still being stored, then closes the store."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5.0)
        await self.generations.store.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
