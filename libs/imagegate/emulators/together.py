"""Emulator of Together's POST /v1/images/generations (also served by the HF router emulator)."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from aiohttp import web

from imagegate.emulators.base import (
    Emulator,
    edited_image,
    image_field,
    input_problem,
    new_id,
    whole_megapixels,
)
from imagegate.providerkit.kontext import KONTEXT_SIZES
from imagegate.providerkit.types import OutputFormat

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"

# model -> (lowest steps, highest steps, default steps)
# What Together charges per megapixel, micro-USD (the catalog's figures; none is published).
PRICES = {
    "black-forest-labs/FLUX.1-schnell": "2700",
    "black-forest-labs/FLUX.1-dev": "25000",
    "stabilityai/stable-diffusion-xl-base-1.0": "2000",
    "black-forest-labs/FLUX.1-kontext-pro": "40000",
    "black-forest-labs/FLUX.1-kontext-max": "80000",
}
MODELS: dict[str, tuple[int, int, int]] = {
    FLUX_SCHNELL: (1, 12, 4),
    FLUX_DEV: (1, 50, 28),
    SDXL: (1, 50, 20),
    "black-forest-labs/FLUX.1-kontext-pro": (1, 50, 28),
    "black-forest-labs/FLUX.1-kontext-max": (1, 50, 28),
}
# Largest image_url data URI the emulator takes (Together publishes no figure, [U]).
MAX_INPUT_BYTES = 20 * 1024 * 1024
_MAX_SIDE = 1792
_RATE_HEADERS = {
    "x-ratelimit-limit": "20",
    "x-ratelimit-remaining": "0",
    "x-ratelimit-reset": "2",
}


def error(
    message: str, status: int, *, kind: str, code: str | None = None, **headers: str
) -> web.Response:
    """Together's OpenAI-style error body."""
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Emulator.json_response(payload, status, headers=headers)


def inference_ms(width: int, height: int, steps: int, latency: float) -> int:
    """A plausible, deterministic inference time: grows with pixels and steps."""
    return int(latency * 1000) + max(1, math.ceil(width * height / 1e6 * steps * 60))


async def handle_generation(
    emu: Emulator, request: web.Request, *, check_auth: bool = True
) -> web.StreamResponse:
    """The images/generations handler, applying the emulator's faults in Together's shapes."""
    if check_auth and (not emu.authorized(request) or emu.faults.take("auth_failed")):
        return error(
            "Invalid API key provided.", 401, kind="invalid_request_error", code="invalid_api_key"
        )
    if emu.faults.take("out_of_credits"):
        return error(
            "Credit limit exceeded. Please add credits to your account to continue.",
            402,
            kind="credit_limit",
        )
    if f := emu.faults.take("rate_limit"):
        return error(
            "You have reached the rate limit for images. Please slow down.",
            429,
            kind="rate_limit_exceeded",
            **{**_RATE_HEADERS, **emu.retry_after_headers(f)},
        )
    if emu.faults.take("error_500"):
        return error("Internal server error", 500, kind="server_error")
    if emu.faults.take("error_502"):
        return web.Response(
            status=502,
            text="<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>",
            content_type="text/html",
        )
    if f := emu.faults.take("error_503"):
        return error(
            "Engine overloaded, please try again later.",
            503,
            kind="server_error",
            **emu.retry_after_headers(f),
        )
    if emu.faults.take("hang", "never_complete"):
        return await emu.hang()
    try:
        body = await request.json()
    except ValueError:
        return error("Request body is not valid JSON", 400, kind="invalid_request_error")
    problem = _validate(body)
    if problem:
        status, message = problem
        return error(message, status, kind="invalid_request_error")
    if emu.faults.take("moderation"):
        # Unconfirmed upstream shape: a refusal whose wording names the safety checker.
        return error(
            "NSFW content was detected in the generated image by the safety checker.",
            422,
            kind="invalid_request_error",
        )
    await emu.generation_delay()
    model, width, height = (
        body["model"],
        int(body.get("width", 1024)),
        int(body.get("height", 1024)),
    )
    source = image_field(body.get("image_url")) or b""
    if "kontext" in model:
        width, height = KONTEXT_SIZES[body.get("aspect_ratio", "1:1")]
    steps = int(body.get("steps", MODELS[model][2]))
    wanted = OutputFormat.PNG if body.get("output_format") == "png" else OutputFormat.JPEG
    expired = emu.faults.take("expired_url") is not None
    use_url = body.get("response_format") == "url" or expired
    ms = inference_ms(width, height, steps, emu.latency)
    seed = body.get("seed") if isinstance(body.get("seed"), int) else 0
    data: list[dict[str, Any]] = []
    for index in range(int(body.get("n", 1))):
        image, declared, _ = emu.result_image(width, height, wanted, seed + index)
        if source and declared == wanted.mime_type:
            image = edited_image(source, width, height, wanted, seed + index)
        item: dict[str, Any] = {"index": index, "timings": {"inference": ms}}
        if use_url:
            item["url"] = emu.store_file(image, declared, ttl=0.0 if expired else 3600.0)
        else:
            item["b64_json"] = base64.b64encode(image).decode()
            item["type"] = "b64_json"
        data.append(item)
    payload = {"id": new_id("tg-") + "-IAD", "model": model, "object": "list", "data": data}
    # Charged per megapixel of output, rounded up per image (also through the HF router, which
    # adds no markup).
    n = int(body.get("n", 1))
    emu.charge(
        payload["id"], model, n * whole_megapixels(width, height), "megapixel", PRICES[model]
    )
    headers = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "19", "x-image-version": "1"}
    if emu.faults.take("malformed_json"):
        return emu.malformed_json(headers=headers)
    if emu.faults.take("slow_body"):
        return await emu.slow(request, json.dumps(payload).encode(), headers=headers)
    return emu.json_response(payload, headers=headers)


def _validate(body: Any) -> tuple[int, str] | None:
    if not isinstance(body, dict):
        return 400, "Request body must be a JSON object"
    model = body.get("model")
    if model not in MODELS:
        return 404, f"Unable to access model {model}. Please visit https://api.together.ai/models"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return 400, "prompt is required"
    for side in ("width", "height"):
        value = body.get(side, 1024)
        if not isinstance(value, int) or value % 8 or not 64 <= value <= _MAX_SIDE:
            return 400, f"{side} must be a multiple of 8 between 64 and {_MAX_SIDE}"
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 4:
        return 400, "n must be between 1 and 4"
    low, high, _ = MODELS[model]
    steps = body.get("steps", low)
    if not isinstance(steps, int) or not low <= steps <= high:
        return 400, f"steps must be between {low} and {high} for {model}"
    if body.get("response_format", "url") not in ("base64", "url"):
        return 400, "response_format must be one of: base64, url"
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        return 400, "output_format must be one of: jpeg, png"
    if "image_url" in body:
        if "kontext" not in model:
            return 400, f"image_url is not supported by {model}"
        value = body["image_url"]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return 400, "image_url: URL inputs are not emulated (the gateway sends data URIs)"
        _, problem = input_problem(image_field(value), "image_url", max_bytes=MAX_INPUT_BYTES)
        if problem is not None:
            return 400, problem
    if "kontext" in model and body.get("aspect_ratio", "1:1") not in KONTEXT_SIZES:
        return 400, "aspect_ratio must be one of: " + ", ".join(KONTEXT_SIZES)
    return None


class TogetherEmulator(Emulator):
    """Together's images API: Bearer auth, base64 or URL results, `timings.inference` in ms."""

    name = "together"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generate)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.credential_ok(token)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await handle_generation(self, request)
