"""The ledger keeps a prompt enhancement as a line of its own, priced per token from the catalog."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from imagegate.common.v1 import image_pb2
from imagegate.metering.v1 import metering_pb2
from services.metering.catalog import load_catalog
from tests.metering.conftest import MeteringEnv


def _request() -> metering_pb2.RecordUsageRequest:
    at = timestamp_pb2.Timestamp()
    at.FromDatetime(datetime(2026, 12, 3, 1, tzinfo=UTC))
    return metering_pb2.RecordUsageRequest(
        request_id="enh-1",
        tenant_id="t1",
        model="flux-schnell",
        outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
        occurred_at=at,
        attempts=[
            metering_pb2.BilledAttempt(
                provider="fal",
                provider_model="fal-ai/flux/schnell",
                attempt_number=1,
                succeeded=True,
                usage=image_pb2.Usage(images=1, megapixels=0.262144),
            ),
            metering_pb2.BilledAttempt(
                provider="groq",
                provider_model="llama-3.1-8b-instant",
                attempt_number=2,
                succeeded=False,
                usage=image_pb2.Usage(input_tokens=4_000_000, output_tokens=1_000_000),
                note="prompt enhancement",
                kind=metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT,
            ),
        ],
    )


async def test_enhancement_line_is_priced_per_token_and_summed_with_the_image(
    metering: MeteringEnv,
) -> None:
    record = (await metering.stub.RecordUsage(_request())).record
    image, line = record.attempts
    assert image.cost_micros == 3_000
    # 4M input tokens at $0.05/1M + 1M output tokens at $0.08/1M = $0.28.
    assert line.cost_micros == 280_000
    assert line.price_id == "groq/llama-3.1-8b-instant@2026-12-03"
    assert line.kind == metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT
    assert record.cost_micros == 283_000
    # A rewrite is the gateway's provider cost, not a failed attempt.
    assert record.failed_cost_micros == 0
    assert (record.provider, record.images) == ("fal", 1)
    summary = await metering.stub.GetUsageSummary(
        metering_pb2.GetUsageSummaryRequest(tenant_id="t1", period="2026-12")
    )
    groups = {(g.provider, g.provider_model): g.cost_micros for g in summary.summary.groups}
    assert groups[("groq", "llama-3.1-8b-instant")] == 280_000


def test_every_text_provider_the_enhancer_knows_has_a_sourced_token_price() -> None:
    from imagegate.textproviders import TEXT_PROVIDERS

    book = load_catalog().book
    for provider in TEXT_PROVIDERS:
        price = book.find(provider.name, provider.model)
        assert price is not None, provider.name
        assert price.source and price.as_of
        assert price.unit_price_micros > 0 and price.input_token_price_micros > 0
