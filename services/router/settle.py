"""Settlement, the Router's side: price what was done, then commit or release and record it once."""

from __future__ import annotations

import asyncio
import logging

from imagegate.common.v1 import image_pb2
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import timestamp
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import prompt_token_bound, worst_case_usage
from imagegate.provider.v1 import provider_pb2
from imagegate.quota.v1 import quota_pb2
from imagegate.router.v1 import router_pb2
from imagegate.settlement import Settlement, Settler
from services.router.catalog import Candidate
from services.router.config import RouterSettings
from services.router.job import Job
from services.router.pending import PendingWork
from services.router.prices import PriceMirror

log = logging.getLogger("services.router")
# How long a request abandoned by its caller may take to hand back its hold.
ABANDON_SETTLE_SECONDS = 5.0
# A release the caller waits for gets at least this long, even past its deadline, so the hold is
# back before a retry arrives (otherwise the outbox hands it back a second or so later).
STRICT_FLOOR_SECONDS = 0.25


class RouterSettlement:
    """Turns a finished job into one settlement order and hands it to the durable settler."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        settler: Settler,
        pricer: PriceMirror,
        pending: PendingWork,
    ) -> None:
        self.settings = settings
        self.settler = settler
        self.pricer = pricer
        self.pending = pending

    def unsuccessful_lines(self, job: Job) -> tuple[list[metering_pb2.BilledAttempt], int]:
        """Failed attempts the provider may bill plus the prompt enhancement's tokens (a line of
        its own, numbered after every image attempt), and their provider cost in micro-USD.

        Each carries the usage the adapter reported for it (what the provider bills, e.g. only
        the BFL tasks that were not moderated). When nothing was reported (the Router's own
        timeout, a cancelled hedge loser) the most it can be billed is recorded (`_estimate`),
        marked as an estimate (`usage_reported` false): the provider may have run all of it.
        """
        billed: list[metering_pb2.BilledAttempt] = []
        total = 0
        enhancement = job.enhancement
        if enhancement.line is not None:
            # The gateway's own cost: the tenant's plan counts images, not prompt rewrites.
            line = metering_pb2.BilledAttempt()
            line.CopyFrom(enhancement.line)
            line.attempt_number = job.log.started + 1
            billed.append(line)
            total += enhancement.cost_micros
        for cand, attempt, reported in job.log.billable_failures:
            usage = reported
            if usage is None:
                usage = self._estimate(cand, job)
            note = f"{attempt.error_reason} after the provider accepted the job"
            billed.append(
                metering_pb2.BilledAttempt(
                    provider=cand.provider,
                    provider_model=cand.provider_model,
                    attempt_number=attempt.attempt_number,
                    usage=usage,
                    succeeded=False,
                    note=note if reported is not None else note + " (usage estimated)",
                    usage_reported=reported is not None,
                )
            )
            total += (
                self.pricer.usage_cost(cand.provider, cand.provider_model, usage, job.accepted_at)
                or 0
            )
        return billed, total

    def _estimate(self, cand: Candidate, job: Job) -> image_pb2.Usage:
        """The most an attempt that reported nothing can be billed: the requested size times n
        (and for token prices the requested quality's tokens, the prompt's at most)."""
        t = job.admitted.norm.template
        price = self.pricer.find(cand.provider, cand.provider_model, job.accepted_at)
        if price is None:
            return image_pb2.Usage(
                images=t.num_images, megapixels=t.width * t.height * t.num_images / 1e6
            )
        return worst_case_usage(
            price,
            width=t.width,
            height=t.height,
            num_images=t.num_images,
            quality=t.quality,
            input_tokens=prompt_token_bound(t.prompt),
        )

    async def succeed(
        self, job: Job, cand: Candidate, resp: provider_pb2.GenerateImageResponse
    ) -> router_pb2.GenerateImageResponse:
        """Charges the tenant for the delivered images, records every attempt's provider cost,
        and builds the caller's answer.

        The tenant charge is the winner's usage priced; failed attempts (failovers, hedge
        losers) are the gateway's own provider cost and never reach the tenant's plan.
        """
        billed, _ = self.unsuccessful_lines(job)
        usage = resp.usage
        billed.append(
            metering_pb2.BilledAttempt(
                provider=cand.provider,
                provider_model=cand.provider_model,
                attempt_number=next(
                    a.attempt_number
                    for a in job.log.attempts
                    if a.outcome == router_pb2.ATTEMPT_OUTCOME_SUCCEEDED
                ),
                usage=usage,
                succeeded=True,
                usage_reported=True,
            )
        )
        charge = (
            self.pricer.usage_cost(cand.provider, cand.provider_model, usage, job.accepted_at) or 0
        )
        reservation = job.reservation
        commit = None
        if reservation is not None:
            # Quota refuses commits above the hold (worst-case holds make that rare); the tenant
            # is charged what the plan counted.
            charge = min(charge, reservation.cost_micros)
            commit = quota_pb2.CommitReservationRequest(
                reservation_id=reservation.id,
                images=min(usage.images, reservation.images),
                megapixels=min(usage.megapixels, reservation.megapixels),
                cost_micros=charge,
            )
        record = self._record(
            job, cand.alias, metering_pb2.REQUEST_OUTCOME_SUCCEEDED, billed, charge
        )
        order = Settlement(reservation.id if reservation else "", commit, record)
        await self._hand_over(job, order, job.admitted.deadline)
        plan = job.plan
        template = job.admitted.norm.template
        notice = job.enhancement.notice
        response = router_pb2.GenerateImageResponse(
            request_id=job.admitted.request_id,
            images=resp.images,
            provider=cand.provider,
            model=cand.alias,
            provider_model=resp.model or cand.provider_model,
            cost_micros=charge,
            usage=usage,
            attempts=job.log.attempts,
            trace_id=job.trace_id,
            deviations=resp.deviations,
            notices=[*plan.notices, *([notice] if notice else [])],
            local_substitute=plan.local_substitute,
            sent_prompt=template.prompt,
            sent_negative_prompt=template.negative_prompt,
        )
        if job.enhancement.report is not None:
            response.enhancement.CopyFrom(job.enhancement.report)
        return response

    async def fail(self, job: Job, deadline: Deadline | None = None) -> int:
        """Releases the hold and records billable failures; returns what they cost.

        A failed caller retries at once: its hold is back before it hears of the failure, or
        the retry could be refused for quota it no longer uses.
        """
        billed, cost = self.unsuccessful_lines(job)
        norm = job.admitted.norm
        record = None
        if billed:
            model = norm.explicit_model or (norm.aliases[0] if norm.aliases else "")
            record = self._record(job, model, metering_pb2.REQUEST_OUTCOME_FAILED, billed)
        res_id = job.reservation.id if job.reservation is not None else ""
        job.settled = True
        if res_id or record is not None:
            order = Settlement(res_id, None, record)
            await self._hand_over(job, order, deadline or job.admitted.deadline, strict=True)
        return cost

    def abandon(self, job: Job) -> None:
        """The caller left (or the Router failed): settle in the background, not at lease expiry."""
        if job.settled:
            return
        deadline = Deadline.after(ABANDON_SETTLE_SECONDS)
        self.pending.spawn(job.admitted.caller.tenant_id, self.fail(job, deadline))
        job.settled = True

    async def settled(self, tenant_id: str) -> None:
        """Read-your-writes: waits (bounded) for the tenant's settlements still in delivery,
        abandoned requests' releases included."""
        wait = self.settings.read_your_writes_seconds
        done = await asyncio.gather(
            self.settler.wait_settled(tenant_id, wait), self.pending.wait(tenant_id, wait)
        )
        if not all(done):
            log.warning(
                "settlements still in delivery; answering with what the ledgers have",
                extra={"tenant_id": tenant_id},
            )

    async def close(self) -> None:
        """Waits (bounded) for abandoned requests' settlements, then closes the settler."""
        await self.pending.wait_all(timeout=10.0)
        await self.settler.close()

    def _record(
        self,
        job: Job,
        model: str,
        outcome: int,
        billed: list[metering_pb2.BilledAttempt],
        charge: int = 0,
    ) -> metering_pb2.RecordUsageRequest:
        return metering_pb2.RecordUsageRequest(
            tenant_charge_micros=charge,
            plan=job.admitted.caller.plan.id,
            request_id=job.admitted.request_id,
            tenant_id=job.admitted.caller.tenant_id,
            model=model,
            outcome=outcome,  # type: ignore[arg-type]
            attempts=billed,
            occurred_at=timestamp(job.accepted_at),
            trace_id=job.trace_id,
        )

    async def _hand_over(
        self, job: Job, order: Settlement, deadline: Deadline, *, strict: bool = False
    ) -> metering_pb2.UsageRecord | None:
        """Never raises (the settler keeps what failed).

        Strict (setting or argument) waits for delivery and returns Metering's record; otherwise
        the order is only written ahead to the outbox here and delivered in the background.
        """
        job.settled = True
        floor = STRICT_FLOOR_SECONDS if strict else self.settings.settle_margin_seconds
        timeout = max(floor, deadline.remaining())
        timeout = min(timeout, self.settings.dependency_timeout_seconds)
        try:
            if strict or self.settings.settle_before_reply:
                return await self.settler.settle(order, timeout=timeout)
            await self.settler.settle_in_background(
                order,
                key=job.admitted.caller.tenant_id,
                timeout=self.settings.dependency_timeout_seconds,
                after=job.admitted.replied,
            )
        except Exception:
            log.exception("settlement failed", extra={"request_id": job.admitted.request_id})
        return None
