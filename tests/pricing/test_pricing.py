"""The one pricing function: units, the rounding rule, quote == usage price."""

from __future__ import annotations

import pytest

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.metering.v1 import metering_pb2
from imagegate.pricing import PriceBook, billable_megapixels, quote_micros, usage_micros
from imagegate.textproviders import TEXT_PROVIDERS
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


# Two 1024x1024 images, worked out by hand from each entry in services/metering/prices.yaml:
# 1.048576 MP per image bills as 2 whole MP, so 4 MP in all; compute seconds are the entry's
# assumed seconds x 2; tokens are 1007.080078125 per MP x 2.097152 MP = 2112 output tokens.
_TWO_1024_SQUARE_IMAGES = {
    ("fal", "fal-ai/flux/schnell"): 4 * 3000,
    ("fal", "fal-ai/flux/dev"): 4 * 25000,
    ("fal", "fal-ai/flux-pro/v1.1"): 4 * 40000,
    ("fal", "fal-ai/fast-sdxl"): 2 * 2500,
    ("replicate", "black-forest-labs/flux-schnell"): 2 * 3000,
    ("replicate", "black-forest-labs/flux-dev"): 2 * 25000,
    ("replicate", "black-forest-labs/flux-pro"): 2 * 55000,
    ("replicate", "stability-ai/sdxl"): 7800,  # 975 x 4.0 s x 2
    ("bfl", "flux-pro-1.1"): 2 * 40000,
    ("bfl", "flux-dev"): 2 * 25000,
    ("huggingface", "stabilityai/stable-diffusion-2-1"): 1320,  # 120 x 5.5 s x 2
    ("huggingface", "stabilityai/stable-diffusion-xl-base-1.0"): 1920,  # 120 x 8.0 s x 2
    ("huggingface", "black-forest-labs/FLUX.1-schnell"): 4 * 2700,
    ("openai", "gpt-image-1"): 2112 * 40,
    ("openai", "gpt-image-1-mini"): 2112 * 8,
    ("together", "black-forest-labs/FLUX.1-schnell"): 4 * 2700,
    ("together", "black-forest-labs/FLUX.1-dev"): 4 * 25000,
    ("together", "stabilityai/stable-diffusion-xl-base-1.0"): 4 * 2000,
    ("local", "imagegate-local-v1"): 0,
    # Edit models (docs/edits.md).
    ("fal", "fal-ai/flux/dev/image-to-image"): 4 * 30000,
    ("fal", "fal-ai/flux-pro/kontext"): 2 * 40000,
    ("fal", "fal-ai/flux-pro/v1/fill"): 4 * 50000,
    ("bfl", "flux-kontext-pro"): 2 * 40000,
    ("bfl", "flux-kontext-max"): 2 * 80000,
    ("bfl", "flux-pro-1.0-fill"): 2 * 50000,
    ("together", "black-forest-labs/FLUX.1-kontext-pro"): 4 * 40000,
    ("together", "black-forest-labs/FLUX.1-kontext-max"): 4 * 80000,
    ("replicate", "black-forest-labs/flux-kontext-pro"): 2 * 40000,
    ("replicate", "black-forest-labs/flux-fill-pro"): 2 * 50000,
    # Hugging Face partner routes (docs/providers-huggingface.md).
    ("huggingface", "black-forest-labs/FLUX.1-schnell:fal-ai"): 4 * 3000,
    ("huggingface", "black-forest-labs/FLUX.1-schnell:nscale"): 4 * 3000,
    ("huggingface", "black-forest-labs/FLUX.1-schnell:replicate"): 2 * 3000,
    ("huggingface", "black-forest-labs/FLUX.1-schnell:auto"): 4 * 3000,
    # Self-hosted (docs/self-hosted.md): diffusers at 333 per second x assumed seconds x 2.
    ("diffusers", "stabilityai/stable-diffusion-2-1"): 1332,  # 333 x 2.0 s x 2
    ("diffusers", "stabilityai/stable-diffusion-xl-base-1.0"): 3330,  # 333 x 5.0 s x 2
    ("diffusers", "black-forest-labs/FLUX.1-schnell"): 1332,
    ("comfyui", "sd-2.1"): 0,
    ("comfyui", "sdxl"): 0,
    ("comfyui", "flux-schnell"): 0,
}


# One prompt rewrite of 1,000 input and 1,000 output tokens, by hand from `text_prices`
# (micro-USD per token: input price x 1,000 + output price x 1,000).
_ONE_REWRITE = {
    ("groq", "llama-3.1-8b-instant"): 130,  # 50 + 80
    ("cerebras", "gpt-oss-120b"): 1100,  # 350 + 750
    ("sambanova", "Meta-Llama-3.1-8B-Instruct"): 300,
    ("fireworks", "accounts/fireworks/models/gpt-oss-20b"): 370,
    ("nebius", "meta-llama/Meta-Llama-3.1-8B-Instruct"): 80,
    ("novita", "meta-llama/llama-3.1-8b-instruct"): 70,
    ("hyperbolic", "meta-llama/Llama-3.3-70B-Instruct"): 1600,
    ("nscale", "meta-llama/Llama-3.1-8B-Instruct"): 200,
    ("cohere", "command-r7b-12-2024"): 188,  # 37.5 + 150 = 187.5, half up
    ("featherless", "meta-llama/Llama-3.1-8B-Instruct"): 200,
}
_TEXT_PROVIDERS = {p.name for p in TEXT_PROVIDERS}


def test_every_text_model_bills_a_rewrite_at_its_hand_computed_cost() -> None:
    text = [p for p in load_catalog().prices if p.provider in _TEXT_PROVIDERS]
    assert {(p.provider, p.provider_model) for p in text} == set(_ONE_REWRITE)
    usage = image_pb2.Usage(input_tokens=1000, output_tokens=1000)
    for price in text:
        assert price.unit == catalog_pb2.PRICE_UNIT_TOKEN, price.id
        assert usage_micros(price, usage) == _ONE_REWRITE[(price.provider, price.provider_model)]


def test_every_catalog_entry_quotes_and_bills_its_hand_computed_cost() -> None:
    catalog = load_catalog()
    book = PriceBook(catalog.prices)
    assert book.find("fal", "fal-ai/flux/schnell") is not None
    assert book.find("fal", "nope") is None
    images = [p for p in catalog.prices if p.provider not in _TEXT_PROVIDERS]
    assert {(p.provider, p.provider_model) for p in images} == set(_TWO_1024_SQUARE_IMAGES)
    assert {p.unit for p in images} == {
        catalog_pb2.PRICE_UNIT_MEGAPIXEL,
        catalog_pb2.PRICE_UNIT_IMAGE,
        catalog_pb2.PRICE_UNIT_COMPUTE_SECOND,
        catalog_pb2.PRICE_UNIT_TOKEN,
        catalog_pb2.PRICE_UNIT_FREE,
    }
    usage = image_pb2.Usage(images=2, megapixels=2 * 1024 * 1024 / 1e6)
    for price in images:
        expected = _TWO_1024_SQUARE_IMAGES[(price.provider, price.provider_model)]
        quality = "medium" if price.unit == catalog_pb2.PRICE_UNIT_TOKEN else ""
        quoted = quote_micros(price, width=1024, height=1024, num_images=2, quality=quality)
        assert quoted == expected, price.id
        assert usage_micros(price, usage) == expected, price.id


@pytest.mark.parametrize(
    ("quality", "tokens_per_image"),
    [("low", 272), ("medium", 1056), ("high", 4160), ("auto", 4160), ("", 4160)],
)
def test_token_quotes_cover_the_worst_case_of_the_requested_quality(
    quality: str, tokens_per_image: int
) -> None:
    price = load_catalog().book.find("openai", "gpt-image-1")
    assert price is not None
    quoted = quote_micros(
        price, width=1024, height=1024, num_images=2, quality=quality, input_tokens=30
    )
    # OpenAI's own table for 1024x1024; "auto" (or no setting) lets OpenAI pick, so high.
    assert quoted == 2 * tokens_per_image * 40 + 30 * 5
    billed = image_pb2.Usage(images=2, output_tokens=2 * tokens_per_image, input_tokens=30)
    assert usage_micros(price, billed) <= quoted
