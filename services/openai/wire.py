"""OpenAI Images wire format: models, request bodies, responses, error bodies."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.inputs.checks import sniff
from imagegate.inputs.masks import alpha_mask_png
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import error_detail, error_from_status
from imagegate.providerkit.images import normalize_image
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    ModelSpec,
    OutputFormat,
    PriceUnit,
    SizeRule,
)

GPT_IMAGE_1 = "gpt-image-1"
# Each edit input under 50MB (OpenAI API reference, images/edits, GPT image models).
MAX_EDIT_IMAGE_BYTES = 50 * 1024 * 1024
GPT_IMAGE_1_MINI = "gpt-image-1-mini"

# The sizes GPT image models accept (besides "auto", which would make the size unpredictable).
FIXED_SIZES: tuple[tuple[int, int], ...] = ((1024, 1024), (1536, 1024), (1024, 1536))

MODEL_SPECS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        id=model,
        sizes=SizeRule(min_side=1024, max_side=1536, fixed=FIXED_SIZES),
        # OpenAI allows n up to 10; ProviderService caps every call at 4.
        max_images=4,
        seed=False,
        negative_prompt=False,
        steps=False,
        guidance=False,
        formats=(OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP),
        price_unit=PriceUnit.TOKEN,
        qualities=("low", "medium", "high", "auto"),
        # POST /v1/images/edits: several images (up to 16; the gateway sends at most 4) and an
        # optional alpha mask; no strength, so no plain image-to-image.
        inpainting=True,
        max_reference_images=4,
        max_input_image_bytes=MAX_EDIT_IMAGE_BYTES,
    )
    for model in (GPT_IMAGE_1, GPT_IMAGE_1_MINI)
)


def edit_form(
    req: GenerationRequest, *, quality: str
) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """Fields and files of the multipart POST /v1/images/edits.

    Every input goes as `image[]` (the edited image first); an inpainting mask goes as `mask`, an
    RGBA PNG transparent where the image is repainted (OpenAI's convention, not the gateway's).
    """
    fields = {
        "model": req.model,
        "prompt": req.prompt,
        "n": str(req.num_images),
        "size": f"{req.width}x{req.height}",
        "output_format": req.output_format.value,
        "quality": quality,
    }
    files = [
        ("image[]", f"input-{i}.{sniff(data) or 'png'}", data) for i, data in enumerate(req.inputs)
    ]
    if req.mask:
        files.append(("mask", "mask.png", alpha_mask_png(req.mask)))
    return fields, files


MODERATION_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# Quota states that no retry will fix; "billing_hard_limit_reached" has an unconfirmed status.
OUT_OF_CREDITS_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
# OpenAI's 429 messages say "Please try again in 6.5s" / "in 120ms" when no header does.
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.I)
# Images bigger than this are decoded in a worker thread so the event loop keeps serving.
_INLINE_BYTES = 256 * 1024


def request_body(req: GenerationRequest, *, quality: str, moderation: str) -> dict[str, Any]:
    """The JSON body for POST /v1/images/generations."""
    # No response_format: GPT image models always answer base64 and reject the field.
    return {
        "model": req.model,
        "prompt": req.prompt,
        "n": req.num_images,
        "size": f"{req.width}x{req.height}",
        "output_format": req.output_format.value,
        "quality": quality,
        "moderation": moderation,
    }


@dataclass
class ParsedResponse:
    """Images and usage read from an ImagesResponse."""

    images: list[GeneratedImage]
    """Decoded, measured images."""
    input_tokens: int
    """usage.input_tokens."""
    output_tokens: int
    """usage.output_tokens."""


async def parse_response(body: Any, *, wanted: OutputFormat, job_id: str) -> ParsedResponse:
    """Reads `data[].b64_json` and `usage`; raises PROVIDER_BAD_RESPONSE (billable)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise _bad("response has no data list", job_id)
    images = []
    for item in body["data"]:
        b64 = item.get("b64_json") if isinstance(item, dict) else None
        if not isinstance(b64, str) or not b64:
            got = "a url" if isinstance(item, dict) and item.get("url") else "nothing"
            raise _bad(
                f"data item has no b64_json (got {got}; GPT image models answer base64)", job_id
            )
        images.append(await _decode(b64, wanted, job_id))
    raw_usage = body.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    return ParsedResponse(images, _int(usage.get("input_tokens")), _int(usage.get("output_tokens")))


def error_fields(resp: httpx.Response) -> tuple[str, str, str]:
    """(message, code, type) from `{"error": {...}}`; the message is scrubbed of keys."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return error_detail(resp), str(err.get("code") or ""), str(err.get("type") or "")
    return error_detail(resp), "", ""


def special_error(resp: httpx.Response, job_id: str) -> ProviderError | None:
    """OpenAI readings of an error answer that the generic status table would get wrong."""
    message, code, _ = error_fields(resp)
    if code in MODERATION_CODES:
        return ProviderError(
            reasons.PROVIDER_CONTENT_MODERATED,
            f"prompt refused by OpenAI's safety system ({code}): {message}",
            http_status=resp.status_code,
            provider_job_id=job_id,
            extra={"provider_code": code},
        )
    if code in OUT_OF_CREDITS_CODES:
        return ProviderError(
            reasons.PROVIDER_OUT_OF_CREDITS,
            f"OpenAI account is out of quota ({code}): {message}",
            http_status=resp.status_code,
            provider_job_id=job_id,
            extra={"provider_code": code},
        )
    if resp.status_code == 429:
        err = error_from_status(resp, message="OpenAI images/generations", job_id=job_id)
        if err.retry_after_seconds is None:
            err.retry_after_seconds = retry_after_from_message(message)
        return err
    return None


def retry_after_from_message(message: str) -> float | None:
    """Seconds from "Please try again in 6.5s" when OpenAI sent no retry header."""
    m = _TRY_AGAIN.search(message)
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000 if m.group(2).lower() == "ms" else value


async def _decode(b64: str, wanted: OutputFormat, job_id: str) -> GeneratedImage:
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _bad(f"image is not valid base64: {err}", job_id) from err
    try:
        if len(data) > _INLINE_BYTES:
            return await asyncio.to_thread(normalize_image, data, wanted)
        return normalize_image(data, wanted)
    except ProviderError as err:
        err.billable, err.provider_job_id = True, job_id
        raise


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value >= 0 else 0


def _bad(message: str, job_id: str) -> ProviderError:
    return ProviderError(
        reasons.PROVIDER_BAD_RESPONSE, message, billable=True, provider_job_id=job_id
    )
