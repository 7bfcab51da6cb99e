"""Domain errors that know how to become a google.rpc.Status with rich details (AIP-193)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from imagegate.grpckit import reasons


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, reported in a BadRequest detail."""

    field: str
    """Path of the field, e.g. "num_images"."""
    description: str
    """What is wrong and what is accepted."""


@dataclass(frozen=True)
class QuotaViolation:
    """One exhausted quota, reported in a QuotaFailure detail."""

    subject: str
    """Who ran out, e.g. "tenant:t_123"."""
    description: str
    """What ran out and when it resets."""


class ImagegateError(Exception):
    """An error a client should see: a canonical code, an ErrorInfo reason and optional details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        domain: str = "imagegate",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        retry_after_seconds: float | None = None,
        extra_details: Sequence[object] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.quota_violations = list(quota_violations)
        self.retry_after_seconds = retry_after_seconds
        self.extra_details = list(extra_details)

    def with_domain(self, domain: str) -> ImagegateError:
        """Sets the ErrorInfo domain when the raiser did not choose one."""
        if self.domain == "imagegate":
            self.domain = domain
        return self

    def to_status_proto(self) -> status_pb2.Status:
        """Builds the google.rpc.Status carried in the trailers."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(
            reason=self.reason,
            domain=self.domain,
            metadata={k: str(v) for k, v in self.metadata.items()},
        )
        status.details.add().Pack(info)
        if self.field_violations:
            bad = error_details_pb2.BadRequest()
            for v in self.field_violations:
                bad.field_violations.add(field=v.field, description=v.description)
            status.details.add().Pack(bad)
        if self.quota_violations:
            qf = error_details_pb2.QuotaFailure()
            for q in self.quota_violations:
                qf.violations.add(subject=q.subject, description=q.description)
            status.details.add().Pack(qf)
        if self.retry_after_seconds is not None:
            secs = max(0.0, self.retry_after_seconds)
            whole = math.floor(secs)
            delay = duration_pb2.Duration(seconds=whole, nanos=int((secs - whole) * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        for detail in self.extra_details:
            status.details.add().Pack(detail)
        return status

    def to_grpc_status(self) -> grpc.Status:
        """Builds the grpc.Status to pass to `context.abort_with_status`."""
        return rpc_status.to_status(self.to_status_proto())


def invalid_argument(violations: Sequence[FieldViolation], *, domain: str) -> ImagegateError:
    """INVALID_ARGUMENT with one BadRequest field violation per problem."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ImagegateError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_ARGUMENT,
        f"invalid request: {summary}",
        domain=domain,
        metadata={"fields": ",".join(v.field for v in violations)},
        field_violations=violations,
    )


def timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp from an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


@dataclass
class ParsedStatus:
    """The parts of a google.rpc.Status a caller acts on."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None
    field_violations: list[FieldViolation] = field(default_factory=list)
    quota_violations: list[QuotaViolation] = field(default_factory=list)


def parse_rpc_error(err: grpc.aio.AioRpcError | grpc.RpcError) -> ParsedStatus:
    """Reads the code, ErrorInfo, RetryInfo and BadRequest out of a failed call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    parsed = ParsedStatus(code=code, message=message or "")
    status = _status_from_error(err)
    if status is None:
        return parsed
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            parsed.reason, parsed.domain = info.reason, info.domain
            parsed.metadata = dict(info.metadata)
        elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            any_detail.Unpack(retry)
            parsed.retry_after_seconds = retry.retry_delay.ToTimedelta().total_seconds()
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            parsed.field_violations = [
                FieldViolation(v.field, v.description) for v in bad.field_violations
            ]
        elif any_detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            qf = error_details_pb2.QuotaFailure()
            any_detail.Unpack(qf)
            parsed.quota_violations = [
                QuotaViolation(v.subject, v.description) for v in qf.violations
            ]
    return parsed


def _status_from_error(err: object) -> status_pb2.Status | None:
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.MergeFromString(value)
            return status
    return None


def from_parsed(parsed: ParsedStatus, *, domain: str | None = None) -> ImagegateError:
    """Re-raises a downstream failure as our own error, keeping its reason and details."""
    return ImagegateError(
        parsed.code,
        parsed.reason or reasons.DEPENDENCY_UNAVAILABLE,
        parsed.message,
        domain=domain or parsed.domain or "imagegate",
        metadata=parsed.metadata,
        field_violations=parsed.field_violations,
        quota_violations=parsed.quota_violations,
        retry_after_seconds=parsed.retry_after_seconds,
    )


CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
