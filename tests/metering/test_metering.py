"""Metering over real gRPC on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import text

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2
from tests.metering.conftest import MeteringEnv

SUCCEEDED = metering_pb2.REQUEST_OUTCOME_SUCCEEDED
FAILED = metering_pb2.REQUEST_OUTCOME_FAILED


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def _attempt(n: int, provider: str, model: str, ok: bool, **usage) -> metering_pb2.BilledAttempt:  # type: ignore[no-untyped-def]
    return metering_pb2.BilledAttempt(
        provider=provider,
        provider_model=model,
        attempt_number=n,
        succeeded=ok,
        usage=image_pb2.Usage(**usage),
        note="" if ok else "timeout after provider accepted the job",
    )


def _request(request_id: str, *attempts, tenant: str = "t1", at: datetime | None = None):  # type: ignore[no-untyped-def]
    return metering_pb2.RecordUsageRequest(
        request_id=request_id,
        tenant_id=tenant,
        model="flux-schnell",
        outcome=SUCCEEDED if any(a.succeeded for a in attempts) else FAILED,
        attempts=list(attempts),
        occurred_at=_ts(at or datetime(2026, 11, 24, 12, tzinfo=UTC)),
        trace_id="abc",
    )


async def _error(call) -> object:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return parse_rpc_error(info.value)


def _rows(m: MeteringEnv, table: str) -> int:
    with m.store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_failover_request_prices_every_billable_attempt(metering: MeteringEnv) -> None:
    req = _request(
        "r1",
        _attempt(1, "bfl", "flux-pro-1.1", False, images=1, megapixels=1.048576),
        _attempt(2, "fal", "fal-ai/flux/schnell", True, images=2, megapixels=2 * 0.786432),
    )
    resp = await metering.stub.RecordUsage(req)
    record = resp.record
    assert resp.created
    assert [a.cost_micros for a in record.attempts] == [40_000, 6_000]
    assert record.attempts[0].price_id == "bfl/flux-pro-1.1@2026-11-01"
    assert record.cost_micros == 46_000
    assert (record.provider, record.images, record.period) == ("fal", 2, "2026-11")
    assert _rows(metering, "usage_records") == 1 and _rows(metering, "usage_attempts") == 2


async def test_same_id_twice_and_8_concurrent_make_one_record(metering: MeteringEnv) -> None:
    req = _request(
        "dup", _attempt(1, "replicate", "black-forest-labs/flux-schnell", True, images=1)
    )
    results = await asyncio.gather(*(metering.stub.RecordUsage(req) for _ in range(8)))
    assert sum(r.created for r in results) == 1
    assert len({r.record.SerializeToString(deterministic=True) for r in results}) == 1
    again = await metering.stub.RecordUsage(req)
    assert not again.created and again.record == results[0].record
    assert _rows(metering, "usage_records") == 1 and _rows(metering, "usage_attempts") == 1


async def test_same_id_different_content_is_refused(metering: MeteringEnv) -> None:
    a = _request("k", _attempt(1, "replicate", "black-forest-labs/flux-schnell", True, images=1))
    b = _request("k", _attempt(1, "replicate", "black-forest-labs/flux-schnell", True, images=2))
    await metering.stub.RecordUsage(a)
    err = await _error(metering.stub.RecordUsage(b))
    assert (err.code, err.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        reasons.IDEMPOTENCY_KEY_REUSED,
    )
    assert err.metadata["request_id"] == "k"


async def test_summary_groups_by_provider_and_model_within_the_month(metering: MeteringEnv) -> None:
    nov = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    dec = datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC)
    schnell = ("fal", "fal-ai/flux/schnell")
    await metering.stub.RecordUsage(
        _request("a", _attempt(1, *schnell, True, images=1, megapixels=1.0), at=nov)
    )
    await metering.stub.RecordUsage(
        _request(
            "b",
            _attempt(
                1, "huggingface", "stabilityai/stable-diffusion-2-1", False, provider_seconds=2.5
            ),
            _attempt(2, *schnell, True, images=1, megapixels=1.5),
            at=nov,
        )
    )
    await metering.stub.RecordUsage(
        _request("c", _attempt(1, *schnell, True, images=1, megapixels=1.0), at=dec)
    )
    await metering.stub.RecordUsage(
        _request("z", _attempt(1, *schnell, True, images=1), tenant="t2", at=nov)
    )
    s = (
        await metering.stub.GetUsageSummary(
            metering_pb2.GetUsageSummaryRequest(tenant_id="t1", period="2026-11")
        )
    ).summary
    assert (s.requests, s.images, s.cost_micros) == (2, 2, 3000 + 300 + 6000)
    assert s.megapixels == pytest.approx(2.5)
    groups = {(g.provider, g.provider_model): g for g in s.groups}
    assert groups[schnell].attempts == 2 and groups[schnell].cost_micros == 9000
    hf = groups[("huggingface", "stabilityai/stable-diffusion-2-1")]
    assert (hf.attempts, hf.images, hf.cost_micros) == (1, 0, 300)
    metering.clock.set(dec)
    current = (
        await metering.stub.GetUsageSummary(metering_pb2.GetUsageSummaryRequest(tenant_id="t1"))
    ).summary
    assert (current.period, current.requests) == ("2026-12", 1)


async def test_list_pages_newest_first_with_opaque_tokens(metering: MeteringEnv) -> None:
    for i in range(7):
        at = datetime(2026, 11, 1 + i, tzinfo=UTC)
        await metering.stub.RecordUsage(
            _request(f"r{i}", _attempt(1, "local", "imagegate-local-v1", True, images=1), at=at)
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await metering.stub.ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(
                tenant_id="t1", period="2026-11", page_size=3, page_token=token
            )
        )
        seen += [r.request_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"r{i}" for i in reversed(range(7))]
    err = await _error(
        metering.stub.ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(
                tenant_id="t2", period="2026-11", page_token="bm9w"
            )
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.field_violations] == ["page_token"]


async def test_quote_and_record_agree_and_catalog_is_listed(metering: MeteringEnv) -> None:
    quote = await metering.stub.QuotePrice(
        metering_pb2.QuotePriceRequest(
            provider="fal", provider_model="fal-ai/flux/dev", width=1024, height=768, num_images=2
        )
    )
    assert quote.cost_micros == 50_000 and quote.price.source
    recorded = await metering.stub.RecordUsage(
        _request(
            "q", _attempt(1, "fal", "fal-ai/flux/dev", True, images=2, megapixels=2 * 0.786432)
        )
    )
    assert recorded.record.cost_micros == quote.cost_micros
    prices = await metering.stub.ListPrices(metering_pb2.ListPricesRequest())
    assert prices.catalog_version and len(prices.prices) >= 19
    assert all(p.source and p.as_of and p.id for p in prices.prices)
    err = await _error(
        metering.stub.QuotePrice(
            metering_pb2.QuotePriceRequest(
                provider="fal", provider_model="nope", width=1, height=1, num_images=1
            )
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reasons.PRICE_NOT_FOUND)


BAD = [
    (
        "RecordUsage",
        metering_pb2.RecordUsageRequest(
            attempts=[metering_pb2.BilledAttempt(usage=image_pb2.Usage(images=-1))]
        ),
        {
            "request_id",
            "tenant_id",
            "outcome",
            "occurred_at",
            "attempts[0].provider",
            "attempts[0].provider_model",
            "attempts[0].attempt_number",
            "attempts[0].usage.images",
        },
    ),
    (
        "GetUsageSummary",
        metering_pb2.GetUsageSummaryRequest(period="2026-13"),
        {"tenant_id", "period"},
    ),
    (
        "ListUsageRecords",
        metering_pb2.ListUsageRecordsRequest(period="nov", page_size=501),
        {"tenant_id", "period", "page_size"},
    ),
    (
        "QuotePrice",
        metering_pb2.QuotePriceRequest(width=0, height=99999, num_images=0, steps=0),
        {"provider", "provider_model", "width", "height", "num_images", "steps"},
    ),
]


@pytest.mark.parametrize(("rpc", "request_", "fields"), BAD)
async def test_bad_input_is_invalid_argument_with_field_violations(
    metering: MeteringEnv, rpc: str, request_: object, fields: set[str]
) -> None:
    err = await _error(getattr(metering.stub, rpc)(request_))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_ARGUMENT)
    assert {v.field for v in err.field_violations} == fields
