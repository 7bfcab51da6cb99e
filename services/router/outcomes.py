"""How one adapter call ended: its outcome, failover decision and breaker scope."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.provider.v1 import provider_pb2
from imagegate.router.v1 import router_pb2

OUTCOME_NAME: dict[int, str] = {
    int(v): k.removeprefix("ATTEMPT_OUTCOME_").lower() for k, v in router_pb2.AttemptOutcome.items()
}


@dataclass
class AttemptResult:
    """How one adapter call ended, classified for failover and breakers."""

    outcome: int
    """AttemptOutcome value."""
    reason: str = ""
    """ErrorInfo reason; empty on success."""
    message: str = ""
    """Error message."""
    billable: bool = False
    """The provider may bill the attempt."""
    retry_after: float | None = None
    """Provider's Retry-After on a rate limit."""
    scope: str = ""
    """Breaker charged: "provider", "model", or "" (says nothing about health)."""
    failover: bool = True
    """Whether the next candidate may be tried."""
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    """Code to return when this attempt ends the request."""
    response: provider_pb2.GenerateImageResponse | None = None
    """The adapter's answer on success."""
    usage: image_pb2.Usage | None = None
    """What the provider bills for a failed attempt, as the adapter reported it; None when it
    reported nothing (settlement then estimates it from the request)."""


def billed_usage(metadata: dict[str, str]) -> image_pb2.Usage | None:
    """The provider-reported usage of a failure (reasons.META_BILLED_*), or None."""
    if reasons.META_BILLED_IMAGES not in metadata:
        return None
    try:
        return image_pb2.Usage(
            images=int(metadata[reasons.META_BILLED_IMAGES]),
            megapixels=float(metadata.get(reasons.META_BILLED_MEGAPIXELS, "0")),
            provider_seconds=float(metadata.get(reasons.META_BILLED_PROVIDER_SECONDS, "0")),
            input_tokens=int(metadata.get(reasons.META_BILLED_INPUT_TOKENS, "0")),
            output_tokens=int(metadata.get(reasons.META_BILLED_OUTPUT_TOKENS, "0")),
            provider_job_id=metadata.get(reasons.META_PROVIDER_JOB_ID, ""),
        )
    except ValueError:
        return None


def classify(err: grpc.aio.AioRpcError) -> AttemptResult:
    """Maps an adapter failure to an outcome, a failover decision and a breaker scope."""
    parsed = parse_rpc_error(err)
    reason, code = parsed.reason, parsed.code
    billable = parsed.metadata.get(reasons.META_BILLABLE) == "true"
    message = parsed.message
    o = router_pb2
    if not reason:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # Our own deadline ran out with the adapter still working: it may have submitted a
            # job the provider bills, and no one can tell us, so it counts as billable.
            return AttemptResult(
                o.ATTEMPT_OUTCOME_TIMEOUT,
                reasons.PROVIDER_TIMEOUT,
                message or "attempt timed out",
                billable=True,
                scope="model",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if code == grpc.StatusCode.CANCELLED:
            return AttemptResult(
                o.ATTEMPT_OUTCOME_CANCELLED,
                "CANCELLED",
                message,
                failover=False,
                code=grpc.StatusCode.CANCELLED,
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return AttemptResult(
                o.ATTEMPT_OUTCOME_OVERLOADED, reasons.PROVIDER_CONCURRENCY_LIMITED, message
            )
        # Unreachable adapter or a transport failure: the whole provider is affected.
        return AttemptResult(
            o.ATTEMPT_OUTCOME_UNAVAILABLE,
            reasons.PROVIDER_UNAVAILABLE,
            message or code.name,
            scope="provider",
        )
    table: dict[str, tuple[int, str, bool]] = {
        reasons.PROVIDER_RATE_LIMITED: (o.ATTEMPT_OUTCOME_RATE_LIMITED, "provider", True),
        reasons.PROVIDER_CONCURRENCY_LIMITED: (o.ATTEMPT_OUTCOME_OVERLOADED, "", True),
        reasons.PROVIDER_UNAVAILABLE: (o.ATTEMPT_OUTCOME_UNAVAILABLE, "model", True),
        reasons.PROVIDER_TIMEOUT: (o.ATTEMPT_OUTCOME_TIMEOUT, "model", True),
        reasons.PROVIDER_BAD_RESPONSE: (o.ATTEMPT_OUTCOME_BAD_RESPONSE, "model", True),
        reasons.PROVIDER_CONTENT_MODERATED: (o.ATTEMPT_OUTCOME_MODERATED, "", True),
        reasons.PROVIDER_INVALID_REQUEST: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", False),
        reasons.PROVIDER_UNSUPPORTED_PARAMETER: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", True),
        reasons.UNKNOWN_MODEL: (o.ATTEMPT_OUTCOME_FAILED, "", True),
        reasons.PROVIDER_AUTH_FAILED: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "provider", True),
        reasons.PROVIDER_OUT_OF_CREDITS: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "provider", True),
        reasons.PROVIDER_DISABLED: (o.ATTEMPT_OUTCOME_PROVIDER_ACCOUNT, "", True),
        reasons.INVALID_ARGUMENT: (o.ATTEMPT_OUTCOME_INVALID_REQUEST, "", False),
    }
    outcome, scope, failover = table.get(reason, (o.ATTEMPT_OUTCOME_FAILED, "model", True))
    if scope == "provider" and parsed.metadata.get(reasons.META_BREAKER_SCOPE) == "model":
        # The adapter knows the failure belongs to one route (an HF partner): narrow, never widen.
        scope = "model"
    retry_after = parsed.retry_after_seconds if reason == reasons.PROVIDER_RATE_LIMITED else None
    usage = billed_usage(parsed.metadata) if billable else None
    return AttemptResult(
        outcome,
        reason,
        message,
        billable=billable,
        usage=usage,
        retry_after=retry_after,
        scope=scope,
        failover=failover,
        code=code,
    )
