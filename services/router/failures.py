"""The error a caller gets when attempts were made and none produced images."""

from __future__ import annotations

import json

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2
from services.router.job import Job
from services.router.outcomes import OUTCOME_NAME, AttemptResult

DOMAIN = "imagegate.router"


def all_failed(job: Job, stop: AttemptResult | None) -> ImagegateError:
    """Names every attempt; the code follows the attempt that stopped failover, else the mix."""
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
        for a in job.log.attempts
    ]
    meta = {
        "attempts": json.dumps(compact, separators=(",", ":")),
        "request_id": job.admitted.request_id,
    }
    summary = "; ".join(
        f"{a.provider}/{a.provider_model}: {a.error_reason}" for a in job.log.attempts
    )
    outcomes = {a.outcome for a in job.log.attempts}
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
    else:
        code, reason = grpc.StatusCode.UNAVAILABLE, reasons.ALL_PROVIDERS_FAILED
        msg = f"all {len(job.log.attempts)} attempts failed: {summary}"
        retry_after = 1.0
    return ImagegateError(
        code,
        reason,
        msg,
        domain=DOMAIN,
        metadata=meta,
        retry_after_seconds=retry_after,
        extra_details=list(job.log.attempts),
    )
