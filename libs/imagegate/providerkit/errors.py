"""ProviderError: one failure vocabulary for every adapter, mapped to gRPC codes in one table."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError

# reason -> gRPC code. The table in docs/errors.md is generated from the same facts.
CODE_FOR_REASON: dict[str, grpc.StatusCode] = {
    reasons.PROVIDER_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.PROVIDER_CONCURRENCY_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.PROVIDER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    reasons.PROVIDER_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    reasons.PROVIDER_CONTENT_MODERATED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROVIDER_INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.PROVIDER_UNSUPPORTED_PARAMETER: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.PROVIDER_AUTH_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROVIDER_OUT_OF_CREDITS: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROVIDER_BAD_RESPONSE: grpc.StatusCode.UNAVAILABLE,
    reasons.PROVIDER_DISABLED: grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass(frozen=True)
class BilledUsage:
    """What the provider bills for a failed call, as it reported it (or as its rule counts it)."""

    images: int = 0
    """Images (tasks, predictions) the provider bills."""
    megapixels: float = 0.0
    """Megapixels of those images."""
    provider_seconds: float = 0.0
    """Compute seconds the provider reported."""
    input_tokens: int = 0
    """Input tokens the provider reported."""
    output_tokens: int = 0
    """Output tokens the provider reported."""

    def metadata(self) -> dict[str, str]:
        """ErrorInfo metadata carrying this usage (reasons.META_BILLED_*)."""
        return {
            reasons.META_BILLED_IMAGES: str(self.images),
            reasons.META_BILLED_MEGAPIXELS: repr(float(self.megapixels)),
            reasons.META_BILLED_PROVIDER_SECONDS: repr(float(self.provider_seconds)),
            reasons.META_BILLED_INPUT_TOKENS: str(self.input_tokens),
            reasons.META_BILLED_OUTPUT_TOKENS: str(self.output_tokens),
        }


class ProviderError(Exception):
    """A provider call failed in a known way."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_seconds: float | None = None,
        billable: bool = False,
        provider_job_id: str = "",
        extra: dict[str, str] | None = None,
        billed: BilledUsage | None = None,
    ) -> None:
        if reason not in CODE_FOR_REASON:
            raise ValueError(f"unknown provider error reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status
        self.retry_after_seconds = retry_after_seconds
        self.billable = billable
        self.provider_job_id = provider_job_id
        self.extra = dict(extra or {})
        self.billed = billed
        """What the provider bills for this failure, when the adapter knows it."""

    def to_imagegate_error(self, provider: str, provider_model: str) -> ImagegateError:
        """The status the adapter returns; metadata carries every variable in the message."""
        metadata = {
            reasons.META_PROVIDER: provider,
            reasons.META_PROVIDER_MODEL: provider_model,
            reasons.META_BILLABLE: "true" if self.billable else "false",
            **self.extra,
        }
        if self.billed is not None:
            # Reported usage implies the provider bills: billable is set to match.
            metadata[reasons.META_BILLABLE] = "true" if self.billed != BilledUsage() else "false"
            metadata.update(self.billed.metadata())
        if self.http_status is not None:
            metadata[reasons.META_HTTP_STATUS] = str(self.http_status)
        if self.provider_job_id:
            metadata[reasons.META_PROVIDER_JOB_ID] = self.provider_job_id
        if self.retry_after_seconds is not None:
            metadata[reasons.META_RETRY_AFTER_SECONDS] = f"{self.retry_after_seconds:g}"
        return ImagegateError(
            CODE_FOR_REASON[self.reason],
            self.reason,
            f"{provider}: {self.message}",
            domain=f"imagegate.provider.{provider}",
            metadata=metadata,
            retry_after_seconds=self.retry_after_seconds,
        )


def bad_answer(message: str, job_id: str) -> ProviderError:
    """PROVIDER_BAD_RESPONSE about an accepted job's answer; billable, since the job ran."""
    return ProviderError(
        reasons.PROVIDER_BAD_RESPONSE, message, billable=True, provider_job_id=job_id
    )
