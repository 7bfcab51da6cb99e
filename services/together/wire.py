"""Together images/generations wire format: models, request bodies, responses, error bodies."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.inputs.encoding import data_uri
from imagegate.providerkit.errors import ProviderError, bad_answer
from imagegate.providerkit.http import error_detail
from imagegate.providerkit.images import normalize_image
from imagegate.providerkit.kontext import KONTEXT_RATIOS
from imagegate.providerkit.types import (
    Deviation,
    GeneratedImage,
    GenerationRequest,
    ModelSpec,
    OutputFormat,
    PriceUnit,
    SizeRule,
)

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
KONTEXT_PRO = "black-forest-labs/FLUX.1-kontext-pro"
KONTEXT_MAX = "black-forest-labs/FLUX.1-kontext-max"
KONTEXT_MODELS = (KONTEXT_PRO, KONTEXT_MAX)

# Together asks for multiples of 8; the side limits are not published, these are conservative.
_FLUX_SIZES = SizeRule(min_side=256, max_side=1792, multiple=8)
_SDXL_SIZES = SizeRule(min_side=512, max_side=1536, multiple=8)


@dataclass(frozen=True)
class StepRange:
    """Inference steps a model accepts, and what to send when the caller sets none."""

    low: int
    """Fewest steps."""
    high: int
    """Most steps."""
    default: int | None
    """Sent when the caller gives none; None leaves it to Together."""


# FLUX schnell must be sent a default: the API-wide default (20) is above schnell's maximum.
STEPS: dict[str, StepRange] = {
    FLUX_SCHNELL: StepRange(1, 12, 4),
    FLUX_DEV: StepRange(1, 50, None),
    SDXL: StepRange(1, 50, None),
}

MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id=FLUX_SCHNELL,
        sizes=_FLUX_SIZES,
        max_images=4,
        seed=True,
        negative_prompt=False,
        steps=True,
        # schnell is guidance-distilled: a guidance value would be ignored.
        guidance=False,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    ModelSpec(
        id=FLUX_DEV,
        sizes=_FLUX_SIZES,
        max_images=4,
        seed=True,
        negative_prompt=False,
        steps=True,
        guidance=True,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    ModelSpec(
        id=SDXL,
        sizes=_SDXL_SIZES,
        max_images=4,
        seed=True,
        negative_prompt=True,
        steps=True,
        guidance=True,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    *(
        ModelSpec(
            id=model,
            sizes=SizeRule(min_side=672, max_side=1568, fixed=tuple(KONTEXT_RATIOS)),
            max_images=4,
            seed=True,
            negative_prompt=False,
            steps=False,
            guidance=False,
            price_unit=PriceUnit.MEGAPIXEL,
            # One image, sent in `image_url` (a data URI: never a caller's URL).
            max_reference_images=1,
        )
        for model in KONTEXT_MODELS
    ),
)

# Codes and wording Together (or a model's safety checker) uses for refused content. Unconfirmed
# upstream; kept broad because the alternative is reporting a refusal as a bad request.
_MODERATION_CODES = frozenset(
    {"content_policy_violation", "moderation_blocked", "nsfw", "nsfw_content", "content_filter"}
)
MODERATION_WORDS = re.compile(r"nsfw|content polic|moderat|safety (checker|system)", re.I)
# Images bigger than this are decoded in a worker thread so the event loop keeps serving.
_INLINE_BYTES = 256 * 1024


def steps_for(req: GenerationRequest) -> tuple[int | None, list[Deviation]]:
    """Steps to send, clamped to the model's range only when degradation is allowed."""
    rng = STEPS.get(req.model)
    if rng is None:
        return req.steps, []
    if req.steps is None:
        return rng.default, []
    if rng.low <= req.steps <= rng.high:
        return req.steps, []
    clamped = min(rng.high, max(rng.low, req.steps))
    if not req.allow_degradation:
        raise ProviderError(
            reasons.PROVIDER_UNSUPPORTED_PARAMETER,
            f"steps={req.steps} outside {rng.low}..{rng.high} for {req.model}",
            extra={"fields": "steps"},
        )
    return clamped, [Deviation("steps", str(req.steps), str(clamped), "model step range")]


def request_body(
    req: GenerationRequest, provider_model: str
) -> tuple[dict[str, Any], list[Deviation]]:
    """The JSON body for POST /v1/images/generations, and any clamping it implies."""
    steps, deviations = steps_for(req)
    body: dict[str, Any] = {
        "model": provider_model,
        "prompt": req.prompt,
        "n": req.num_images,
        # "base64", not OpenAI's "b64_json": Together rejects the latter.
        "response_format": "base64",
        # Ask for JPEG only when JPEG is wanted; WebP is converted from lossless PNG.
        "output_format": "jpeg" if req.output_format is OutputFormat.JPEG else "png",
    }
    if req.model in KONTEXT_MODELS:
        body["aspect_ratio"] = KONTEXT_RATIOS[(req.width, req.height)]
        if req.reference_images:
            body["image_url"] = data_uri(req.reference_images[0])
    else:
        body["width"], body["height"] = req.width, req.height
    if steps is not None:
        body["steps"] = steps
    if req.seed is not None:
        body["seed"] = req.seed
    if req.negative_prompt:
        body["negative_prompt"] = req.negative_prompt
    if req.guidance_scale is not None:
        body["guidance_scale"] = req.guidance_scale
    return body, deviations


@dataclass
class ParsedImages:
    """Images and usage read from a Together response."""

    images: list[GeneratedImage]
    """Decoded, measured, converted images."""
    provider_seconds: float
    """Inference time Together reported (its `timings.inference` is in milliseconds)."""
    job_id: str
    """Together's response id."""
    url_items: list[str]
    """Result URLs, when Together answered with URLs instead of base64."""


async def parse_images(
    body: Any, *, wanted: OutputFormat, seed: int | None, job_id: str = ""
) -> ParsedImages:
    """Reads `data[].b64_json` (or `data[].url`) and `timings`; raises PROVIDER_BAD_RESPONSE."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise bad_answer("response has no data list", job_id)
    job_id = str(body.get("id") or job_id)
    items = body["data"]
    if not items:
        # Found by `make fuzz`: a 200 with `data: []` read as a success without images.
        raise bad_answer("response has an empty data list", job_id)
    images: list[GeneratedImage] = []
    urls: list[str] = []
    seconds = 0.0
    single = len(items) == 1
    for item in sorted(items, key=_index):
        if not isinstance(item, dict):
            raise bad_answer(f"data item is {type(item).__name__}, not an object", job_id)
        timings = item.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("inference"), int | float):
            # One call renders the batch; items repeat its time rather than adding to it.
            seconds = max(seconds, float(timings["inference"]) / 1000.0)
        b64 = item.get("b64_json")
        if isinstance(b64, str) and b64:
            images.append(await decode_image(b64, wanted, seed if single else None, job_id))
        elif isinstance(item.get("url"), str) and item["url"]:
            urls.append(item["url"])
        else:
            raise bad_answer("data item has neither b64_json nor url", job_id)
    return ParsedImages(images, seconds, job_id, urls)


async def decode_image(
    b64: str, wanted: OutputFormat, seed: int | None, job_id: str
) -> GeneratedImage:
    """Base64 -> bytes -> sniffed, measured, converted image."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_answer(f"image is not valid base64: {err}", job_id) from err
    try:
        if len(data) > _INLINE_BYTES:
            return await asyncio.to_thread(normalize_image, data, wanted, seed=seed)
        return normalize_image(data, wanted, seed=seed)
    except ProviderError as err:
        err.billable, err.provider_job_id = True, job_id
        raise


def error_fields(resp: httpx.Response) -> tuple[str, str, str]:
    """(message, code, type) from an OpenAI-style error body; the message is scrubbed of keys."""
    code = kind = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code, kind = str(err.get("code") or ""), str(err.get("type") or "")
    elif isinstance(body, dict):
        code = str(body.get("code") or "")
    return error_detail(resp), code, kind


def special_error(resp: httpx.Response, job_id: str) -> ProviderError | None:
    """Together-specific readings of an error answer; None means the generic table applies."""
    message, code, _ = error_fields(resp)
    status = resp.status_code
    if code in _MODERATION_CODES or (
        status in (400, 422) and MODERATION_WORDS.search(message or "")
    ):
        return ProviderError(
            reasons.PROVIDER_CONTENT_MODERATED,
            f"content refused by Together's safety checks: {message or code}",
            http_status=status,
            provider_job_id=job_id,
        )
    return None


def is_legacy_rate_limit(resp: httpx.Response) -> bool:
    """Together used to answer rate limits with 400 and code "rate_limit"."""
    return resp.status_code == 400 and error_fields(resp)[1] == "rate_limit"


def _index(item: Any) -> int:
    return (
        item.get("index", 0) if isinstance(item, dict) and isinstance(item.get("index"), int) else 0
    )
