"""Price history: dated entries per model; a request is priced by the entry in force when it
was accepted, and the entry's version is on the ledger row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2

from imagegate.common.v1 import image_pb2
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import PriceBook
from services.metering.catalog import load_catalog
from services.metering.store import MeteringStore
from services.router.prices import PriceMirror

HISTORY = """
version: "test.1"
prices:
  - {provider: fal, provider_model: fal-ai/flux/schnell, unit: megapixel, unit_price_micros: 3000,
     confirmed: true, source: "fal.ai model page", as_of: "2026-11-01"}
  - {provider: fal, provider_model: fal-ai/flux/schnell, unit: megapixel, unit_price_micros: 2500,
     source: "fal.ai model page after a price cut", as_of: "2026-11-20",
     effective_from: "2026-12-10"}
  - {provider: bfl, provider_model: flux-dev, unit: image, unit_price_micros: 25000,
     source: "reseller", as_of: "2026-11-01"}
"""


def _catalog(tmp_path: Path, text: str = HISTORY):  # type: ignore[no-untyped-def]
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return load_catalog(path)


def _at(day: int, month: int = 12) -> datetime:
    return datetime(2026, month, day, 12, tzinfo=UTC)


def test_a_model_keeps_dated_entries_and_each_applies_from_its_day(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    fal = [p for p in catalog.prices if p.provider == "fal"]
    assert [(p.id, p.effective_until) for p in fal] == [
        ("fal/fal-ai/flux/schnell@2026-11-01", "2026-12-10"),
        ("fal/fal-ai/flux/schnell@2026-12-10", ""),
    ]
    book = catalog.book
    assert book.find("fal", "fal-ai/flux/schnell", _at(9)).unit_price_micros == 3000  # type: ignore[union-attr]
    assert book.find("fal", "fal-ai/flux/schnell", _at(10)).unit_price_micros == 2500  # type: ignore[union-attr]
    # Without a time: the entry in force now (one dated ahead waits for its day).
    assert book.find("fal", "fal-ai/flux/schnell") == book.find(
        "fal", "fal-ai/flux/schnell", datetime.now(UTC)
    )
    # Before the first entry the oldest figure is the best one known.
    assert book.find("fal", "fal-ai/flux/schnell", _at(1, 1)).unit_price_micros == 3000  # type: ignore[union-attr]
    # The Router's mirror, built from ListPrices, prices the same way.
    mirror = PriceMirror(catalog.prices)
    usage = image_pb2.Usage(images=1, megapixels=0.786432)
    assert mirror.usage_cost("fal", "fal-ai/flux/schnell", usage, _at(9)) == 3000
    assert mirror.usage_cost("fal", "fal-ai/flux/schnell", usage, _at(11)) == 2500
    assert len(PriceBook(catalog.prices)) == 2  # models, not entries


def test_two_entries_of_one_model_on_one_day_are_refused(tmp_path: Path) -> None:
    twice = HISTORY.replace('effective_from: "2026-12-10"', 'effective_from: "2026-11-01"')
    with pytest.raises(ValueError, match="two prices"):
        _catalog(tmp_path, twice)


def test_the_packaged_catalog_loads_with_its_confirmed_entries_marked() -> None:
    catalog = load_catalog()
    # An entry is marked confirmed exactly when its source says it was checked on the provider's
    # own page ("[confirmed"), so `admin prices` never calls a secondary figure confirmed.
    assert {p.id for p in catalog.prices if p.confirmed} == {
        p.id for p in catalog.prices if "[confirmed" in p.source
    }
    assert sum(p.confirmed for p in catalog.prices) >= 7
    assert all(p.effective_from == p.as_of for p in catalog.prices)
    assert catalog.book.find("openai", "gpt-image-1-mini") is not None


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


async def test_the_ledger_prices_each_request_by_the_entry_in_force_then(
    tmp_path: Path, database_url: str
) -> None:
    store = MeteringStore.open(database_url, catalog=_catalog(tmp_path))
    try:
        ids = {}
        for rid, day in (("before", 9), ("after", 10)):
            record, created = await store.record_usage(
                metering_pb2.RecordUsageRequest(
                    request_id=rid,
                    tenant_id="t1",
                    model="flux-schnell",
                    outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
                    attempts=[
                        metering_pb2.BilledAttempt(
                            provider="fal",
                            provider_model="fal-ai/flux/schnell",
                            attempt_number=1,
                            succeeded=True,
                            usage=image_pb2.Usage(images=2, megapixels=2 * 0.786432),
                            usage_reported=True,
                        )
                    ],
                    occurred_at=_ts(_at(day)),
                    tenant_charge_micros=6000 if day == 9 else 5000,
                )
            )
            assert created
            ids[rid] = (record.attempts[0].price_id, record.cost_micros)
        assert ids == {
            "before": ("fal/fal-ai/flux/schnell@2026-11-01", 6000),
            "after": ("fal/fal-ai/flux/schnell@2026-12-10", 5000),
        }
        summary = await store.usage_summary("t1", "2026-12")
        assert summary.cost_micros == 11000 and summary.tenant_charge_micros == 11000
    finally:
        await store.close()
