"""The one pricing function: units, the rounding rule, quote == usage price."""

from __future__ import annotations

import pytest

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import PriceBook, billable_megapixels, quote_micros, usage_micros
from services.metering.catalog import load_catalog


def _price(unit: int, unit_price: float, **kw) -> metering_pb2.Price:  # type: ignore[no-untyped-def]
    return metering_pb2.Price(id="p", unit=unit, unit_price_micros=unit_price, **kw)


@pytest.mark.parametrize(
    ("width", "height", "n", "expected_mp"),
    [
        (1024, 768, 1, 1),
        (1000, 1000, 1, 1),
        (1024, 1024, 1, 2),
        (1024, 768, 3, 3),
        (512, 512, 4, 4),
    ],
)
def test_megapixels_round_up_per_image(width: int, height: int, n: int, expected_mp: int) -> None:
    price = _price(catalog_pb2.PRICE_UNIT_MEGAPIXEL, 3000)
    assert quote_micros(price, width=width, height=height, num_images=n) == 3000 * expected_mp
    usage = image_pb2.Usage(images=n, megapixels=n * width * height / 1e6)
    assert billable_megapixels(usage) == expected_mp


def test_compute_seconds_use_reported_time_else_the_assumption_and_round_half_up_once() -> None:
    price = _price(catalog_pb2.PRICE_UNIT_COMPUTE_SECOND, 120, assumed_seconds_per_image=5.5)
    assert usage_micros(price, image_pb2.Usage(images=1, provider_seconds=5.457)) == 655  # 654.84
    assert usage_micros(price, image_pb2.Usage(images=1, provider_seconds=0.0125)) == 2  # 1.5 -> 2
    assert usage_micros(price, image_pb2.Usage(images=2)) == 1320
    assert quote_micros(price, width=512, height=512, num_images=2) == 1320


def test_tokens_price_output_and_input_or_assume_per_megapixel() -> None:
    price = _price(
        catalog_pb2.PRICE_UNIT_TOKEN,
        40,
        input_token_price_micros=5,
        assumed_tokens_per_megapixel=1056 / 1.048576,
    )
    assert usage_micros(price, image_pb2.Usage(images=1, output_tokens=4160, input_tokens=50)) == (
        4160 * 40 + 50 * 5
    )
    assert quote_micros(price, width=1024, height=1024, num_images=1) == 1056 * 40


def test_image_and_free_units() -> None:
    assert (
        usage_micros(_price(catalog_pb2.PRICE_UNIT_IMAGE, 55000), image_pb2.Usage(images=3))
        == 165000
    )
    assert usage_micros(_price(catalog_pb2.PRICE_UNIT_FREE, 0), image_pb2.Usage(images=3)) == 0
    with pytest.raises(ValueError, match="unit"):
        usage_micros(_price(catalog_pb2.PRICE_UNIT_UNSPECIFIED, 1), image_pb2.Usage(images=1))


def test_fractional_unit_prices_are_exact_decimals() -> None:
    price = _price(catalog_pb2.PRICE_UNIT_MEGAPIXEL, 2700.5)
    assert quote_micros(price, width=1000, height=1000, num_images=1) == 2701  # 2700.5 -> half up


def test_every_catalog_entry_quotes_the_same_as_its_usage() -> None:
    catalog = load_catalog()
    book = PriceBook(catalog.prices)
    assert book.find("fal", "fal-ai/flux/schnell") is not None
    assert book.find("fal", "nope") is None
    for price in catalog.prices:
        quoted = quote_micros(price, width=1024, height=768, num_images=2)
        usage = image_pb2.Usage(images=2, megapixels=2 * 1024 * 768 / 1e6)
        assert quoted == usage_micros(price, usage), price.id
