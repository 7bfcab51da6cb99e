"""The error a caller gets when attempts were made and none produced images."""

from __future__ import annotations

import json
from collections import Counter

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2
from services.router.job import Job
from services.router.outcomes import OUTCOME_NAME, AttemptResult

DOMAIN = "imagegate.router"


# Attempt outcomes that say the gateway's own provider account cannot serve (an operator must
# act); when every attempt ended so, retrying soon cannot help and the caller is told so.
ACCOUNT = router_pb2.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT
# When every candidate could serve again at once, a caller still waits this long before retrying.
MIN_RETRY_SECONDS = 1.0


def all_failed(
    job: Job, stop: AttemptResult | None, *, retry_in: float, cost_micros: int
) -> ImagegateError:
    """Names every attempt; the code follows the attempt that stopped failover, else the
    reason every attempt shares, else UNAVAILABLE with the time until a candidate can serve.

    `retry_in` is that time (seconds); `cost_micros` what the providers bill the gateway for the failed
    attempts (the tenant is charged nothing for a failed request).
    """
    attempts = job.log.attempts
    compact = [
        {
            "n": a.attempt_number,
            "p": a.provider,
            "m": a.provider_model,
            "o": OUTCOME_NAME.get(a.outcome, "failed"),
            "r": a.error_reason,
            "ms": round(a.latency.ToNanoseconds() / 1e6, 1),
            **({"b": 1} if a.billable else {}),
        }
        for a in attempts
    ]
    meta = {
        "attempts": json.dumps(compact, separators=(",", ":")),
        "request_id": job.admitted.request_id,
        reasons.META_COST_MICROS: str(cost_micros),
    }
    summary = "; ".join(f"{a.provider}/{a.provider_model}: {a.error_reason}" for a in attempts)
    outcomes = {a.outcome for a in attempts}
    retry_after = None
    if stop is not None:
        code, reason = stop.code, stop.reason or reasons.ALL_PROVIDERS_FAILED
        msg = f"{stop.message} (attempts: {summary})"
    elif outcomes == {router_pb2.ATTEMPT_OUTCOME_TIMEOUT} or job.admitted.deadline.remaining() <= 0:
        code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, reasons.ALL_PROVIDERS_FAILED
        msg = f"no provider delivered within the deadline: {summary}"
    elif outcomes == {router_pb2.ATTEMPT_OUTCOME_MODERATED}:
        code, reason = grpc.StatusCode.FAILED_PRECONDITION, reasons.PROVIDER_CONTENT_MODERATED
        msg = f"every provider refused the content: {summary}"
    elif outcomes == {ACCOUNT}:
        code = grpc.StatusCode.FAILED_PRECONDITION
        reason = Counter(a.error_reason for a in attempts).most_common(1)[0][0]
        msg = (
            f"no provider account of this gateway can serve the request ({summary}); "
            "this is not transient: the gateway's operator must fix the provider account"
        )
    else:
        # Every provider asking us to back off is worth naming: the wait is theirs, not ours.
        limited = {a.error_reason for a in attempts} == {reasons.PROVIDER_RATE_LIMITED}
        reason = reasons.PROVIDER_RATE_LIMITED if limited else reasons.ALL_PROVIDERS_FAILED
        code = grpc.StatusCode.UNAVAILABLE
        retry_after = max(MIN_RETRY_SECONDS, retry_in)
        msg = (
            f"all {len(attempts)} attempts failed: {summary}; a candidate can serve again in "
            f"{retry_after:.1f}s"
        )
    if cost_micros:
        msg += (
            f"; the failed attempts cost {cost_micros} micro-USD (the providers bill the gateway;"
            " your plan is not charged)"
        )
    return ImagegateError(
        code,
        reason,
        msg,
        domain=DOMAIN,
        metadata=meta,
        retry_after_seconds=retry_after,
        extra_details=list(attempts),
    )
