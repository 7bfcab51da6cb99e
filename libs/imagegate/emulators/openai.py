"""Emulator of OpenAI's POST /v1/images/generations for GPT image models."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, edited_image, input_problem, new_id
from imagegate.inputs.encoding import parse_multipart
from imagegate.providerkit.types import OutputFormat

GPT_IMAGE_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
RETIRED_MODELS = ("dall-e-2", "dall-e-3")
# What OpenAI charges per token, micro-USD: (image output, text input). gpt-image-1 from the
# community tally of the price page; mini and 1.5 are the catalog's assumptions.
PRICES = {
    "gpt-image-1": ("40", "5"),
    "gpt-image-1-mini": ("8", "2"),
    "gpt-image-1.5": ("32", "4"),
}
SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
# Output tokens per image by quality and size (OpenAI's published gpt-image-1 table).
OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
_KNOWN_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "stream",
        "partial_images",
        "user",
        "response_format",
        "style",
    }
)
_EDIT_FIELDS = (_KNOWN_FIELDS - {"style", "moderation"}) | {"input_fidelity"}
# /v1/images/edits for GPT image models: up to 16 images, each png/webp/jpg under 50MB; the mask
# a PNG with alpha under 4MB, of the first image's size (OpenAI API reference, images/edits).
MAX_EDIT_IMAGES = 16
MAX_EDIT_IMAGE_BYTES = 50 * 1024 * 1024
MAX_MASK_BYTES = 4 * 1024 * 1024
_FORMATS = {"png": OutputFormat.PNG, "jpeg": OutputFormat.JPEG, "webp": OutputFormat.WEBP}


def error(
    message: str,
    status: int,
    *,
    kind: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """OpenAI's `{"error": {message, type, param, code}}` body."""
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Emulator.json_response(payload, status, headers=headers)


def image_input_tokens(width: int, height: int) -> int:
    """A stand-in for image input tokens: 85 plus 170 per 512-pixel tile after fitting the image
    within 2048 and its short side to 768 (the published vision rule; OpenAI bills from usage)."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def prompt_tokens(prompt: str) -> int:
    """A stand-in tokenizer: about four characters per token."""
    return max(1, math.ceil(len(prompt) / 4))


class OpenAIEmulator(Emulator):
    """OpenAI Images for GPT image models: Bearer auth, b64_json only, usage tokens."""

    name = "openai"

    def __init__(self, *, latency: float = 0.0, key: str | None = None) -> None:
        super().__init__(latency=latency, key=key)
        self.edit_inputs: list[bytes] = []
        """The first input image of each accepted edit, in order."""
        self.moderation_code = "moderation_blocked"
        """Code sent by the moderation fault: "moderation_blocked" (GPT image) or
        "content_policy_violation" (the DALL·E-era code)."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_post("/v1/images/edits", self._edit)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.credential_ok(token)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, edit=False)

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, edit=True)

    async def _serve(self, request: web.Request, *, edit: bool) -> web.StreamResponse:
        rid = {"x-request-id": new_id("req_")}
        if not self.authorized(request) or self.faults.take("auth_failed"):
            # Deliberately harsher than OpenAI, which masks the key: the adapter must scrub it.
            presented = request.headers.get("authorization", "").partition(" ")[2]
            return error(
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                401,
                kind="invalid_request_error",
                code="invalid_api_key",
                headers=rid,
            )
        if self.faults.take("out_of_credits"):
            return error(
                "You exceeded your current quota, please check your plan and billing details.",
                429,
                kind="insufficient_quota",
                code="insufficient_quota",
                headers=rid,
            )
        if f := self.faults.take("rate_limit"):
            wait = f.retry_after if f.retry_after is not None else 12.0
            return error(
                "Rate limit exceeded for images per minute in organization org-emulator. "
                f"Limit: 5/1min. Current: 6/1min. Please try again in {wait:g}s.",
                429,
                kind="requests",
                code="rate_limit_exceeded",
                headers={
                    **rid,
                    "retry-after": str(math.ceil(wait)),
                    "retry-after-ms": str(int(wait * 1000)),
                    "x-ratelimit-limit-requests": "5",
                    "x-ratelimit-remaining-requests": "0",
                },
            )
        if self.faults.take("error_500"):
            return error(
                "The server had an error while processing your request. Sorry about that!",
                500,
                kind="server_error",
                headers=rid,
            )
        if self.faults.take("error_502"):
            return web.Response(
                status=502,
                text="<html><head><title>502 Bad Gateway</title></head>"
                "<body><center>cloudflare</center></body></html>",
                content_type="text/html",
            )
        if f := self.faults.take("error_503"):
            return error(
                "The engine is currently overloaded, please try again later.",
                503,
                kind="server_error",
                headers={**rid, **self.retry_after_headers(f)},
            )
        if self.faults.take("hang", "never_complete"):
            return await self.hang()
        image_tokens = 0
        if edit:
            parsed = await self._edit_form(request)
            if isinstance(parsed, web.Response):
                return parsed
            body, image_tokens = parsed
        else:
            try:
                body = await request.json()
            except ValueError:
                return error(
                    "We could not parse the JSON body of your request.",
                    400,
                    kind="invalid_request_error",
                    headers=rid,
                )
        problem = self._validate(body, edit=edit)
        if problem is not None:
            return problem
        if self.faults.take("moderation"):
            return error(
                "Your request was rejected by the safety system. safety_violations=[sexual].",
                400,
                kind="image_generation_user_error",
                code=self.moderation_code,
                headers=rid,
            )
        await self.generation_delay()
        return await self._answer(request, body, rid, image_tokens)

    async def _edit_form(self, request: web.Request) -> tuple[dict[str, Any], int] | web.Response:
        """The edit form as a body dict (images kept aside) and the input image tokens."""
        if request.content_type != "multipart/form-data":
            return error(
                "Invalid Content-Type header (application/json), expected multipart/form-data.",
                400,
                kind="invalid_request_error",
            )
        body: dict[str, Any] = {}
        images: list[bytes] = []
        mask: bytes | None = None
        raw = await request.read()
        for name, filename, data in parse_multipart(raw, request.headers["content-type"]):
            if name in ("image", "image[]") and filename is not None:
                images.append(data)
            elif name == "mask" and filename is not None:
                mask = data
            elif name in ("n", "output_compression", "partial_images"):
                body[name] = int(data) if data.decode().isdigit() else data.decode()
            else:
                body[name] = data.decode("utf-8", "replace")
        if not images:
            return error(
                "Missing required parameter: 'image'.",
                400,
                kind="invalid_request_error",
                param="image",
            )
        if len(images) > MAX_EDIT_IMAGES:
            return error(
                f"Too many images: {len(images)}; at most {MAX_EDIT_IMAGES}.",
                400,
                kind="invalid_request_error",
                param="image",
            )
        first = None
        tokens = 0
        for i, data in enumerate(images):
            info, problem = input_problem(data, f"image[{i}]", max_bytes=MAX_EDIT_IMAGE_BYTES)
            if problem is not None or info is None:
                return error(
                    f"Invalid input image: {problem}. Supported formats are png, webp and jpg "
                    "under 50MB.",
                    400,
                    kind="invalid_request_error",
                    code="invalid_image",
                    param="image",
                )
            first = first or info
            tokens += image_input_tokens(info.width, info.height)
        if mask is not None:
            info, problem = input_problem(mask, "mask", max_bytes=MAX_MASK_BYTES, formats=("png",))
            if problem is not None or info is None or not info.has_alpha:
                return error(
                    "Invalid mask: it must be a PNG with an alpha channel under 4MB"
                    + (f" ({problem})" if problem else "."),
                    400,
                    kind="invalid_request_error",
                    code="invalid_image",
                    param="mask",
                )
            assert first is not None
            if (info.width, info.height) != (first.width, first.height):
                return error(
                    "Invalid mask: the mask and image must have the same dimensions "
                    f"({info.width}x{info.height} vs {first.width}x{first.height}).",
                    400,
                    kind="invalid_request_error",
                    code="invalid_image",
                    param="mask",
                )
        self.edit_inputs.append(images[0])
        return body, tokens

    def _validate(self, body: Any, *, edit: bool = False) -> web.Response | None:
        if not isinstance(body, dict):
            return error("Request body must be an object.", 400, kind="invalid_request_error")
        unknown = sorted(set(body) - (_EDIT_FIELDS if edit else _KNOWN_FIELDS))
        if unknown:
            return error(
                f"Unknown parameter: '{unknown[0]}'.",
                400,
                kind="invalid_request_error",
                code="unknown_parameter",
                param=unknown[0],
            )
        model = body.get("model", "dall-e-2")
        if model in RETIRED_MODELS or model not in GPT_IMAGE_MODELS:
            return error(
                f"The model `{model}` does not exist or you do not have access to it.",
                404,
                kind="invalid_request_error",
                code="model_not_found",
            )
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return error(
                "Missing required parameter: 'prompt'.",
                400,
                kind="invalid_request_error",
                param="prompt",
            )
        if "response_format" in body:
            return error(
                "Unknown parameter: 'response_format'.",
                400,
                kind="invalid_request_error",
                code="unknown_parameter",
                param="response_format",
            )
        if body.get("size", "auto") not in SIZES:
            return error(
                f"Invalid value: '{body.get('size')}'. Supported values are: "
                + ", ".join(f"'{s}'" for s in SIZES),
                400,
                kind="invalid_request_error",
                code="invalid_value",
                param="size",
            )
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10:
            return error(
                "n must be between 1 and 10.", 400, kind="invalid_request_error", param="n"
            )
        if body.get("output_format", "png") not in _FORMATS:
            return error(
                "Invalid output_format.", 400, kind="invalid_request_error", param="output_format"
            )
        if body.get("quality", "auto") not in ("auto", "low", "medium", "high"):
            return error("Invalid quality.", 400, kind="invalid_request_error", param="quality")
        return None

    async def _answer(
        self, request: web.Request, body: dict[str, Any], rid: dict[str, str], image_tokens: int = 0
    ) -> web.StreamResponse:
        size = body.get("size", "auto")
        size = "1024x1024" if size == "auto" else size
        width, height = (int(v) for v in size.split("x"))
        quality = body.get("quality", "auto")
        quality = "medium" if quality == "auto" else quality
        fmt_name = body.get("output_format", "png")
        n = int(body.get("n", 1))
        expired = self.faults.take("expired_url") is not None
        data: list[dict[str, Any]] = []
        for index in range(n):
            image, declared, _ = self.result_image(width, height, _FORMATS[fmt_name], index)
            if image_tokens and self.edit_inputs and declared == _FORMATS[fmt_name].mime_type:
                image = edited_image(self.edit_inputs[-1], width, height, _FORMATS[fmt_name], index)
            if expired:
                # A DALL·E-style URL answer, already expired: GPT image models never send one.
                data.append({"url": self.store_file(image, declared, ttl=0.0)})
            else:
                data.append({"b64_json": base64.b64encode(image).decode()})
        text_in = prompt_tokens(body["prompt"])
        image_out = OUTPUT_TOKENS[quality][size] * n
        # Charged by the usage it reports: image output tokens plus text input tokens.
        job_id = rid["x-request-id"]
        out_price, in_price = PRICES[body["model"]]
        self.charge(job_id, body["model"], image_out, "token", out_price)
        # Input image tokens of an edit are charged at the input rate too (the catalog's one rate).
        self.charge(job_id, body["model"], text_in + image_tokens, "token", in_price)
        payload = {
            "created": int(time.time()),
            "data": data,
            "background": "opaque",
            "output_format": fmt_name,
            "quality": quality,
            "size": size,
            "usage": {
                "input_tokens": text_in + image_tokens,
                "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_tokens},
                "output_tokens": image_out,
                "output_tokens_details": {"text_tokens": 0, "image_tokens": image_out},
                "total_tokens": text_in + image_tokens + image_out,
            },
        }
        if self.faults.take("malformed_json"):
            return self.malformed_json(headers=rid)
        if self.faults.take("slow_body"):
            return await self.slow(request, json.dumps(payload).encode(), headers=rid)
        return self.json_response(payload, headers={**rid, "openai-processing-ms": "4210"})
