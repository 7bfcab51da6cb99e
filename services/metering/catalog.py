"""The price catalog loaded from prices.yaml (versioned data with a source and date per price)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imagegate.common.v1 import catalog_pb2
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import PriceBook

_UNITS = {
    "megapixel": catalog_pb2.PRICE_UNIT_MEGAPIXEL,
    "image": catalog_pb2.PRICE_UNIT_IMAGE,
    "compute_second": catalog_pb2.PRICE_UNIT_COMPUTE_SECOND,
    "token": catalog_pb2.PRICE_UNIT_TOKEN,
    "free": catalog_pb2.PRICE_UNIT_FREE,
}


@dataclass(frozen=True)
class Catalog:
    """A loaded catalog: its version, its entries and an index."""

    version: str
    """Catalog version, e.g. "2026-11-24.1"."""
    prices: list[metering_pb2.Price]
    """Every entry, past ones included, by model then effective date."""
    book: PriceBook
    """Lookup by (provider, provider model)."""


def load_catalog(path: Path | None = None) -> Catalog:
    """Reads and validates the catalog from `path` or the packaged prices.yaml.

    A model may have several dated entries (its price history): each applies from its
    `effective_from` day (default: its `as_of`) until the next one's; two entries of one model
    on the same day are refused.
    """
    if path is None:
        text = resources.files("services.metering").joinpath("prices.yaml").read_text()
    else:
        text = path.read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    prices: list[metering_pb2.Price] = []
    seen: set[tuple[str, str, str]] = set()
    # Text models (the prompt enhancer's) are priced per token and make no images, so they need
    # no megapixel assumption.
    entries = [(e, False) for e in data["prices"]]
    entries += [(e, True) for e in data.get("text_prices") or []]
    for entry, is_text in entries:
        unit = _UNITS.get(str(entry["unit"]))
        if unit is None:
            raise ValueError(f"unknown unit {entry['unit']!r} in {entry}")
        price = metering_pb2.Price(
            provider=str(entry["provider"]),
            provider_model=str(entry["provider_model"]),
            unit=unit,
            unit_price_micros=float(entry["unit_price_micros"]),
            input_token_price_micros=float(entry.get("input_token_price_micros", 0)),
            assumed_seconds_per_image=float(entry.get("assumed_seconds_per_image", 0)),
            assumed_tokens_per_megapixel=float(entry.get("assumed_tokens_per_megapixel", 0)),
            source=str(entry["source"]),
            as_of=str(entry["as_of"]),
            confirmed=bool(entry.get("confirmed", False)),
            assumed_tokens_per_megapixel_by_quality={
                str(k): float(v)
                for k, v in (entry.get("assumed_tokens_per_megapixel_by_quality") or {}).items()
            },
            effective_from=str(entry.get("effective_from", entry["as_of"])),
        )
        try:
            date.fromisoformat(price.effective_from)
        except ValueError as err:
            raise ValueError(f"{price.provider}/{price.provider_model}: bad date") from err
        price.id = f"{price.provider}/{price.provider_model}@{price.effective_from}"
        key = (price.provider, price.provider_model, price.effective_from)
        if key in seen:
            raise ValueError(f"two prices for {key[:2]} from {price.effective_from}")
        if price.unit_price_micros < 0 or not price.source:
            raise ValueError(f"price {price.id}: negative or unsourced")
        if unit == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND and price.assumed_seconds_per_image <= 0:
            raise ValueError(f"price {price.id}: needs assumed_seconds_per_image")
        if is_text and unit != catalog_pb2.PRICE_UNIT_TOKEN:
            raise ValueError(f"price {price.id}: a text model is priced per token")
        if (
            unit == catalog_pb2.PRICE_UNIT_TOKEN
            and not is_text
            and price.assumed_tokens_per_megapixel <= 0
        ):
            raise ValueError(f"price {price.id}: needs assumed_tokens_per_megapixel")
        seen.add(key)
        prices.append(price)
    book = PriceBook(prices)
    return Catalog(version=str(data["version"]), prices=book.entries(), book=book)
