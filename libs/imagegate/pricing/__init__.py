"""Pure pricing: one function turns a catalog price and a usage into integer micro-USD.

Rounding rule (the only one): the cost of one attempt is computed exactly in decimal micro-USD
from the provider's billing unit, then rounded half up to a whole micro-USD once, at the end.
Unit-specific rules applied before that single rounding:

- PRICE_UNIT_MEGAPIXEL: each image is billed as ceil(its megapixels) whole megapixels (fal's rule).
- PRICE_UNIT_IMAGE: images x unit price.
- PRICE_UNIT_COMPUTE_SECOND: the provider's reported seconds x unit price; when the provider
  reports none, images x assumed_seconds_per_image.
- PRICE_UNIT_TOKEN: output tokens x unit price + input tokens x input_token_price_micros; when the
  provider reports no output tokens, megapixels x assumed_tokens_per_megapixel output tokens.
- PRICE_UNIT_FREE: zero.

`quote_micros` builds the usage a request would have and calls the same function, so a quote and
the recorded cost of the same generation never disagree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.metering.v1 import metering_pb2

__all__ = [
    "QUALITIES",
    "PriceBook",
    "billable_megapixels",
    "prompt_token_bound",
    "quote_micros",
    "quote_tokens_per_megapixel",
    "usage_micros",
    "worst_case_usage",
]

# Float megapixels such as 1.0000000000000002 must not round up to a whole extra megapixel.
_MP_EPSILON = 1e-9


def _dec(value: float | int) -> Decimal:
    # repr() of a float is its shortest round-trip text, so 0.0027 stays exactly 0.0027.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _round_half_up(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def billable_megapixels(usage: image_pb2.Usage) -> int:
    """Whole megapixels a per-megapixel provider bills: ceil per image, times images."""
    if usage.megapixels <= 0:
        return 0
    if usage.images <= 0:
        return max(0, math.ceil(usage.megapixels - _MP_EPSILON))
    per_image = usage.megapixels / usage.images
    return usage.images * max(1, math.ceil(per_image - _MP_EPSILON))


def _exact_micros(price: metering_pb2.Price, usage: image_pb2.Usage) -> Decimal:
    unit = price.unit
    unit_price = _dec(price.unit_price_micros)
    if unit == catalog_pb2.PRICE_UNIT_FREE:
        return Decimal(0)
    if unit == catalog_pb2.PRICE_UNIT_MEGAPIXEL:
        return unit_price * billable_megapixels(usage)
    if unit == catalog_pb2.PRICE_UNIT_IMAGE:
        return unit_price * max(0, usage.images)
    if unit == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND:
        seconds = (
            _dec(usage.provider_seconds)
            if usage.provider_seconds > 0
            else _dec(price.assumed_seconds_per_image) * max(0, usage.images)
        )
        return unit_price * seconds
    if unit == catalog_pb2.PRICE_UNIT_TOKEN:
        output_tokens = (
            Decimal(usage.output_tokens)
            if usage.output_tokens > 0
            else _dec(price.assumed_tokens_per_megapixel) * _dec(max(0.0, usage.megapixels))
        )
        return unit_price * output_tokens + _dec(price.input_token_price_micros) * Decimal(
            max(0, usage.input_tokens)
        )
    raise ValueError(f"price {price.id!r} has no billing unit")


def usage_micros(price: metering_pb2.Price, usage: image_pb2.Usage) -> int:
    """Cost of one attempt in micro-USD from the usage the adapter measured (rounded once)."""
    return _round_half_up(_exact_micros(price, usage))


QUALITIES = ("low", "medium", "high", "auto")
"""Quality settings a request may name (OpenAI GPT image models); "" is the provider default."""


def quote_tokens_per_megapixel(price: metering_pb2.Price, quality: str = "") -> float:
    """Output tokens per megapixel a quote assumes: the setting's figure, or the worst case
    (the largest) for "auto" or no setting, since the provider then picks."""
    table = dict(price.assumed_tokens_per_megapixel_by_quality)
    if not table:
        return price.assumed_tokens_per_megapixel
    if quality in table:
        return table[quality]
    return max(table.values())


def worst_case_usage(
    price: metering_pb2.Price,
    *,
    width: int,
    height: int,
    num_images: int,
    quality: str = "",
    input_tokens: int = 0,
) -> image_pb2.Usage:
    """The most a generation can be billed for, as a usage: `num_images` images of width x
    height and, for token prices, the requested quality's output tokens (the largest for "auto"
    or none) plus `input_tokens` (an upper bound of the prompt's tokens)."""
    megapixels = num_images * width * height / 1_000_000
    usage = image_pb2.Usage(images=num_images, megapixels=megapixels)
    if price.unit == catalog_pb2.PRICE_UNIT_TOKEN:
        per_mp = _dec(quote_tokens_per_megapixel(price, quality))
        # Whole tokens per image, rounded up (the provider bills whole tokens) after dropping
        # float noise past the sixth decimal (272.00000000000006 is 272 tokens, not 273).
        exact = per_mp * Decimal(width * height) / Decimal(1_000_000)
        per_image = math.ceil(exact.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP))
        usage.output_tokens = per_image * num_images
        usage.input_tokens = max(0, input_tokens)
    return usage


def quote_micros(
    price: metering_pb2.Price,
    *,
    width: int,
    height: int,
    num_images: int,
    steps: int | None = None,
    quality: str = "",
    input_tokens: int = 0,
) -> int:
    """Expected cost in micro-USD of `num_images` images of width x height, before running:
    the price of `worst_case_usage`, so a hold made from it covers what is billed.

    `steps` is accepted for prices that depend on it; no catalog entry does today, so it does not
    change the result (compute-second prices use assumed_seconds_per_image).
    """
    if width <= 0 or height <= 0 or num_images <= 0:
        raise ValueError("width, height and num_images must be positive")
    del steps
    usage = worst_case_usage(
        price,
        width=width,
        height=height,
        num_images=num_images,
        quality=quality,
        input_tokens=input_tokens,
    )
    return usage_micros(price, usage)


def prompt_token_bound(prompt: str) -> int:
    """An upper bound of a prompt's tokens: its UTF-8 bytes (a BPE token covers at least one)."""
    return len(prompt.encode("utf-8"))


class PriceBook:
    """The catalog indexed by (provider, provider model), with each model's price history.

    A model's entries apply from their `effective_from` day (UTC) until the next entry's; a time
    before the first entry is priced by the first (the catalog's oldest figure is all we know).
    The book fills in each entry's `effective_until`.
    """

    def __init__(self, prices: Iterable[metering_pb2.Price]) -> None:
        history: dict[tuple[str, str], list[metering_pb2.Price]] = {}
        for price in prices:
            entry = metering_pb2.Price()
            entry.CopyFrom(price)
            if not entry.effective_from:
                entry.effective_from = entry.as_of
            history.setdefault((entry.provider, entry.provider_model), []).append(entry)
        for entries in history.values():
            entries.sort(key=lambda p: p.effective_from)
            for older, newer in itertools.pairwise(entries):
                older.effective_until = newer.effective_from
            entries[-1].ClearField("effective_until")
        self._history = history

    def find(
        self, provider: str, provider_model: str, at: datetime | None = None
    ) -> metering_pb2.Price | None:
        """The entry of a provider's model in force at `at` (default: now, so an entry recorded
        ahead of a price change waits for its day), or None."""
        entries = self._history.get((provider, provider_model))
        if not entries:
            return None
        at = at or datetime.now(UTC)
        day = at.astimezone(UTC).date().isoformat() if at.tzinfo else at.date().isoformat()
        chosen = entries[0]
        for entry in entries:
            if entry.effective_from <= day:
                chosen = entry
        return chosen

    def history(self, provider: str, provider_model: str) -> list[metering_pb2.Price]:
        """Every entry of a model, oldest first."""
        return list(self._history.get((provider, provider_model), []))

    def entries(self) -> list[metering_pb2.Price]:
        """Every entry, by model then effective date."""
        return [p for key in sorted(self._history) for p in self._history[key]]

    def __len__(self) -> int:
        return len(self._history)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(entries[-1] for entries in self._history.values())
