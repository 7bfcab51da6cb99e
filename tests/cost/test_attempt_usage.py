"""What the Router records for a failed attempt: the adapter's reported usage, else an estimate."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from imagegate.grpckit import reasons
from imagegate.providerkit.errors import BilledUsage, ProviderError
from services.router.outcomes import classify


def _rpc_error(err: ProviderError | None, code: grpc.StatusCode) -> AioRpcError:
    trailing = Metadata()
    if err is not None:
        status = err.to_imagegate_error("bfl", "flux-dev").to_status_proto()
        trailing = Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return AioRpcError(code, Metadata(), trailing, details="failed")


def test_reported_usage_of_a_failure_reaches_the_attempt() -> None:
    err = ProviderError(
        reasons.PROVIDER_CONTENT_MODERATED,
        "1 of 2 tasks moderated",
        provider_job_id="a,b",
        billed=BilledUsage(images=1, megapixels=0.786432, provider_seconds=0.25),
    )
    result = classify(_rpc_error(err, grpc.StatusCode.FAILED_PRECONDITION))
    assert result.billable
    assert result.usage is not None
    assert (result.usage.images, result.usage.provider_seconds) == (1, 0.25)
    assert result.usage.megapixels == pytest.approx(0.786432)
    assert result.usage.provider_job_id == "a,b"


def test_a_failure_reported_as_billing_nothing_is_not_billable() -> None:
    err = ProviderError(
        reasons.PROVIDER_CONTENT_MODERATED, "all moderated", billable=True, billed=BilledUsage()
    )
    result = classify(_rpc_error(err, grpc.StatusCode.FAILED_PRECONDITION))
    assert not result.billable and result.usage is None


def test_the_routers_own_timeout_is_billable_with_no_reported_usage() -> None:
    # No adapter status: our deadline ran out while the adapter may have submitted a job.
    result = classify(_rpc_error(None, grpc.StatusCode.DEADLINE_EXCEEDED))
    assert result.reason == reasons.PROVIDER_TIMEOUT
    assert result.billable and result.usage is None


def test_an_unreported_attempt_is_estimated_at_the_most_it_can_be_billed() -> None:
    from imagegate.pricing import quote_micros, usage_micros, worst_case_usage
    from services.metering.catalog import load_catalog

    book = load_catalog().book
    gpt = book.find("openai", "gpt-image-1")
    fal = book.find("fal", "fal-ai/flux/schnell")
    assert gpt is not None and fal is not None
    high = worst_case_usage(
        gpt, width=1024, height=1536, num_images=2, quality="high", input_tokens=9
    )
    assert (high.output_tokens, high.input_tokens) == (2 * 6240, 9)  # OpenAI's table
    auto = worst_case_usage(gpt, width=1024, height=1024, num_images=1)
    assert auto.output_tokens == 4160
    sized = worst_case_usage(fal, width=1024, height=768, num_images=3)
    assert (sized.images, sized.output_tokens) == (3, 0)
    assert sized.megapixels == pytest.approx(3 * 0.786432)
    # The estimate and the quote are one computation.
    assert usage_micros(gpt, high) == quote_micros(
        gpt, width=1024, height=1536, num_images=2, quality="high", input_tokens=9
    )
