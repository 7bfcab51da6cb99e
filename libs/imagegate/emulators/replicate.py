"""Replicate predictions API emulator: create (Prefer: wait), get, cancel, delivery CDN."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from imagegate.emulators.base import (
    Emulator,
    edited_image,
    image_bytes_size,
    image_field,
    input_problem,
    new_id,
)
from imagegate.providerkit.kontext import KONTEXT_SIZES
from imagegate.providerkit.types import OutputFormat

# Output sizes of the FLUX models per aspect_ratio at megapixels "1" (replicate/cog-flux
# predict.py); 4:3 / 3:4 and the "0.25" sizes (each side halved, to 16) are [U].
FLUX_SIZES_1MP = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
}
FLUX_SIZES = {("1", ar): wh for ar, wh in FLUX_SIZES_1MP.items()} | {
    ("0.25", ar): (w // 32 * 16, h // 32 * 16) for ar, (w, h) in FLUX_SIZES_1MP.items()
}
SDXL_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
OFFICIAL = (
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-dev",
    "black-forest-labs/flux-pro",
    "black-forest-labs/flux-kontext-pro",
    "black-forest-labs/flux-fill-pro",
)
# Official models that answer one URI string rather than a list.
SINGLE_OUTPUT = OFFICIAL[2:]
NSFW_ERROR = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)
_TERMINAL = ("succeeded", "failed", "canceled", "aborted")
# What Replicate charges, micro-USD: official models per output image (model pages); SDXL per
# second of its hardware (an L40S at $0.000975/s, the catalog's assumption).
PRICES = {
    "black-forest-labs/flux-schnell": ("image", "3000"),
    "black-forest-labs/flux-dev": ("image", "25000"),
    "black-forest-labs/flux-pro": ("image", "55000"),
    "stability-ai/sdxl": ("second", "975"),
    "black-forest-labs/flux-kontext-pro": ("image", "40000"),
    "black-forest-labs/flux-fill-pro": ("image", "50000"),
}


@dataclass
class Prediction:
    """One prediction."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    status: str = "starting"
    output: Any = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    never_complete: bool = False
    moderated: bool = False
    canceled_by_client: bool = False


class ReplicateEmulator(Emulator):
    """Emulates https://api.replicate.com with `Authorization: Bearer r8_...`."""

    name = "replicate"
    expired_status = 404

    def __init__(
        self,
        *,
        latency: float = 0.0,
        key: str | None = None,
        processing_with_output: bool = False,
        honour_wait: bool = True,
    ) -> None:
        super().__init__(latency=latency, key=key)
        self.honour_wait = honour_wait
        """Whether `Prefer: wait` holds the create open (False: answer "starting" at once)."""
        self.processing_with_output = processing_with_output
        """Output appears while status stays "processing" (what Replicate does for files)."""
        self.predictions: dict[str, Prediction] = {}
        """Predictions by id."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_official)
        app.router.add_post("/v1/predictions", self._create_version)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme in ("Bearer", "Token") and self.credential_ok(token)

    def _problem(self, status: int, title: str, detail: str, **extra: Any) -> web.Response:
        headers = {"Content-Type": "application/problem+json"}
        body = {"title": title, "detail": detail, "status": status, **extra}
        return self.json_response(body, status, headers)

    def _guard(self, request: web.Request) -> web.Response | None:
        if self.faults.take("auth_failed") or not self.authorized(request):
            return self._problem(
                401, "Unauthenticated", "You did not pass a valid authentication token"
            )
        return None

    async def _create_official(self, request: web.Request) -> web.StreamResponse:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in OFFICIAL:
            denied = self._guard(request)
            return denied or self._problem(
                404, "Not found", "The requested resource could not be found."
            )
        return await self._create(request, model, "")

    async def _create_version(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, "", "")

    async def _create(self, request: web.Request, model: str, version: str) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        if self.faults.take("out_of_credits"):
            return self._problem(
                402,
                "Insufficient credit",
                "You have insufficient credit to run this model. Go to "
                "https://replicate.com/account/billing#billing to purchase credit. Once you "
                "purchase credit, please wait a few minutes before trying again.",
            )
        if fault := self.faults.take("rate_limit"):
            wait = fault.retry_after if fault.retry_after is not None else 30
            return self.json_response(
                {
                    "detail": f"Request was throttled. Your rate limit resets in ~{wait:g}s.",
                    "status": 429,
                },
                429,
                # The reset time is in the prose; a Retry-After header only when the fault sets one.
                self.retry_after_headers(fault) if fault.retry_after is not None else {},
            )
        if fault := self.faults.take("error_500", "error_502", "error_503"):
            status = int(fault.kind.removeprefix("error_"))
            headers = self.retry_after_headers(fault) if status == 503 else {}
            return (
                self._problem(status, "Service unavailable", "Something went wrong")
                if status == 500
                else web.Response(status=status, text="upstream connect error", headers=headers)
            )
        if self.faults.take("hang"):
            return await self.hang()
        try:
            body = await request.json()
        except ValueError:
            return self._problem(400, "Bad request", "Invalid JSON")
        if not model:
            version = str(body.get("version", ""))
            if version != SDXL_VERSION:
                return self._problem(
                    422,
                    "Invalid version or not permitted",
                    "The specified version does not exist (or perhaps you don't have permission "
                    "to use it?)",
                )
            model = "stability-ai/sdxl"
        inp = body.get("input")
        invalid = _validate(model, inp)
        if invalid:
            detail = "".join(f"- {f['field']}: {f['description']}\n" for f in invalid)
            return self._problem(422, "Input validation failed", detail, invalid_fields=invalid)
        pred = Prediction(
            id=new_id()[:26],
            model=model,
            version=version or "official",
            input=inp,
            never_complete=bool(self.faults.take("never_complete")),
            moderated=bool(self.faults.take("moderation")),
        )
        self.predictions[pred.id] = pred
        malformed = self.faults.take("malformed_json")
        hold = _prefer_wait(request.headers.get("Prefer"))
        headers = {"ratelimit-remaining": "599", "ratelimit-reset": "1"}
        if hold is not None and self.honour_wait:
            headers["preference-applied"] = f"wait={hold}"
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline and not self._usable(pred):
                await self.wait(min(0.02, max(0.0, deadline - time.monotonic())))
                if self._stopping.is_set():
                    break
        else:
            self._advance(pred)
        headers["Location"] = f"{self.base_url}/v1/predictions/{pred.id}"
        if malformed:
            return self.malformed_json(201, headers)
        return self.json_response(self._body(pred), 201, headers)

    def _usable(self, pred: Prediction) -> bool:
        self._advance(pred)
        return pred.status in _TERMINAL or bool(pred.output)

    def _advance(self, pred: Prediction) -> None:
        if pred.status in _TERMINAL:
            return
        elapsed = time.monotonic() - pred.created
        if pred.status == "starting":
            pred.status = "processing"
        if pred.never_complete or elapsed < self.latency:
            return
        if pred.output:
            return
        if pred.moderated:
            pred.status, pred.error = "failed", NSFW_ERROR
            pred.metrics = {"predict_time": 0.4}
            self._bill(pred)
            return
        pred.output = self._render(pred)
        pred.metrics = {
            "predict_time": 0.05 + 0.01 * len(pred.output if isinstance(pred.output, list) else [1])
        }
        self._bill(pred)
        if not self.processing_with_output:
            pred.status = "succeeded"

    def _bill(self, pred: Prediction) -> None:
        """Official models: per output image (a failed one has none); others: per second of
        hardware for the time it ran, failed or not."""
        unit, price = PRICES[pred.model]
        if unit == "second":
            seconds = Decimal(repr(float((pred.metrics or {}).get("predict_time", 0))))
            self.charge(pred.id, pred.model, seconds, unit, price)
        elif pred.output:
            n = len(pred.output) if isinstance(pred.output, list) else 1
            self.charge(pred.id, pred.model, n, unit, price)

    def _render(self, pred: Prediction) -> Any:
        inp = pred.input
        source = image_field(inp.get("image")) or b""
        if pred.model == "stability-ai/sdxl":
            width, height = int(inp.get("width", 1024)), int(inp.get("height", 1024))
            if source:
                # With an input image SDXL answers at its size, whatever width/height say.
                width, height = image_bytes_size(source)
            fmt = OutputFormat.PNG
        elif pred.model == "black-forest-labs/flux-kontext-pro":
            ratio = inp.get("aspect_ratio", "match_input_image")
            if ratio == "match_input_image":
                ratio = "1:1"
            width, height = KONTEXT_SIZES[ratio]
            source = image_field(inp.get("input_image")) or b""
            fmt = OutputFormat.PNG if inp.get("output_format") == "png" else OutputFormat.JPEG
        elif pred.model == "black-forest-labs/flux-fill-pro":
            width, height = image_bytes_size(source)
            fmt = OutputFormat.PNG if inp.get("output_format") == "png" else OutputFormat.JPEG
        elif inp.get("aspect_ratio") == "custom":
            width, height = int(inp["width"]) // 32 * 32, int(inp["height"]) // 32 * 32
            fmt = _FORMATS.get(inp.get("output_format", "webp"), OutputFormat.WEBP)
        else:
            key = (str(inp.get("megapixels", "1")), str(inp.get("aspect_ratio", "1:1")))
            width, height = FLUX_SIZES[key]
            fmt = _FORMATS.get(inp.get("output_format", "webp"), OutputFormat.WEBP)
        seed = int(inp.get("seed", 1234))
        urls = []
        n = 1 if pred.model in SINGLE_OUTPUT else int(inp.get("num_outputs", 1))
        for i in range(n):
            data, declared, _ = self.result_image(width, height, fmt, seed + i)
            if source and declared == fmt.mime_type:
                data = edited_image(source, width, height, fmt, seed + i)
            urls.append(self.store_file(data, declared, suffix=f"/out-{i}.{fmt.value}"))
        # flux-pro returns one URI string; the others a list of URIs.
        return urls[0] if pred.model in SINGLE_OUTPUT else urls

    def _body(self, pred: Prediction) -> dict[str, Any]:
        url = f"{self.base_url}/v1/predictions/{pred.id}"
        return {
            "id": pred.id,
            "model": pred.model,
            "version": pred.version,
            "input": pred.input,
            "logs": "",
            "output": pred.output,
            "data_removed": False,
            "error": pred.error,
            "status": pred.status,
            "created_at": pred.created_at,
            "metrics": pred.metrics,
            "urls": {
                "get": url,
                "cancel": f"{url}/cancel",
                "stream": f"{self.base_url}/v1/files/{pred.id}",
            },
        }

    async def _get(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        pred = self.predictions.get(request.match_info["id"])
        if pred is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        self._advance(pred)
        await asyncio.sleep(0)
        return self.json_response(self._body(pred))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        pred = self.predictions.get(request.match_info["id"])
        if pred is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        if pred.status not in _TERMINAL:
            pred.status, pred.canceled_by_client = "canceled", True
        return self.json_response(self._body(pred))


_FORMATS = {"webp": OutputFormat.WEBP, "jpg": OutputFormat.JPEG, "png": OutputFormat.PNG}


def _prefer_wait(value: str | None) -> int | None:
    if not value:
        return None
    m = re.fullmatch(r"\s*wait(?:=(\d+))?\s*", value)
    if m is None:
        return None
    return max(1, min(60, int(m.group(1) or 60)))


def _validate(model: str, inp: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def bad(name: str, kind: str, description: str) -> None:
        out.append({"type": kind, "field": f"input.{name}", "description": description})

    if not isinstance(inp, dict):
        return [{"type": "required", "field": "input", "description": "input is required"}]
    if not isinstance(inp.get("prompt"), str) or not inp["prompt"]:
        bad("prompt", "required", "prompt is required")
    if model == "stability-ai/sdxl":
        allowed = {
            "prompt",
            "negative_prompt",
            "width",
            "height",
            "num_outputs",
            "num_inference_steps",
            "guidance_scale",
            "seed",
            "scheduler",
            "refine",
            "image",
            "mask",
            "prompt_strength",
        }
        limits: dict[str, tuple[float, float]] = {
            "num_inference_steps": (1, 500),
            "guidance_scale": (1, 50),
            "num_outputs": (1, 4),
            "prompt_strength": (0, 1),
        }
        image_size = _file_input(inp, "image", bad)
        mask_size = _file_input(inp, "mask", bad)
        if mask_size and not image_size and "image" not in inp:
            bad("mask", "required", "mask needs an image")
        if image_size and mask_size and image_size != mask_size:
            bad(
                "mask",
                "invalid",
                f"mask is {mask_size[0]}x{mask_size[1]}, image is {image_size[0]}x{image_size[1]}",
            )
    elif model == "black-forest-labs/flux-kontext-pro":
        allowed = {
            "prompt",
            "input_image",
            "aspect_ratio",
            "output_format",
            "safety_tolerance",
            "seed",
            "prompt_upsampling",
        }
        limits = {"safety_tolerance": (0, 6)}
        _file_input(inp, "input_image", bad)
        ratio = inp.get("aspect_ratio", "match_input_image")
        if ratio != "match_input_image" and ratio not in KONTEXT_SIZES:
            bad("aspect_ratio", "enum", "aspect_ratio must be one of the listed ratios")
        if inp.get("output_format", "png") not in ("jpg", "png"):
            bad("output_format", "enum", 'output_format must be one of: "jpg", "png"')
    elif model == "black-forest-labs/flux-fill-pro":
        allowed = {
            "prompt",
            "image",
            "mask",
            "steps",
            "guidance",
            "outpaint",
            "output_format",
            "safety_tolerance",
            "seed",
            "prompt_upsampling",
        }
        limits = {"steps": (15, 50), "guidance": (1.5, 100), "safety_tolerance": (0, 6)}
        image_size = _file_input(inp, "image", bad)
        mask_size = _file_input(inp, "mask", bad)
        if "image" not in inp:
            bad("image", "required", "image is required")
        if image_size and mask_size and image_size != mask_size:
            bad(
                "mask",
                "invalid",
                f"mask is {mask_size[0]}x{mask_size[1]}, image is {image_size[0]}x{image_size[1]}",
            )
        if inp.get("output_format", "jpg") not in ("jpg", "png"):
            bad("output_format", "enum", 'output_format must be one of: "jpg", "png"')
    elif model == "black-forest-labs/flux-pro":
        allowed = {
            "prompt",
            "aspect_ratio",
            "width",
            "height",
            "steps",
            "guidance",
            "interval",
            "seed",
            "output_format",
            "output_quality",
            "safety_tolerance",
            "prompt_upsampling",
        }
        limits = {"steps": (1, 50), "guidance": (2, 5), "width": (256, 1440), "height": (256, 1440)}
    else:
        allowed = {
            "prompt",
            "aspect_ratio",
            "num_outputs",
            "num_inference_steps",
            "seed",
            "output_format",
            "output_quality",
            "disable_safety_checker",
            "go_fast",
            "megapixels",
            "guidance",
        }
        steps = (1, 4) if model.endswith("schnell") else (1, 50)
        limits = {"num_inference_steps": steps, "num_outputs": (1, 4), "guidance": (0, 10)}
        if model.endswith("schnell"):
            allowed.discard("guidance")
        if str(inp.get("megapixels", "1")) not in ("1", "0.25"):
            bad("megapixels", "enum", 'megapixels must be one of: "1", "0.25"')
        if inp.get("aspect_ratio", "1:1") not in FLUX_SIZES_1MP:
            bad("aspect_ratio", "enum", "aspect_ratio must be one of the listed ratios")
    for name in inp:
        if name not in allowed:
            bad(name, "additional_property_not_allowed", "Additional property is not allowed")
    for name, (lo, hi) in limits.items():
        v = inp.get(name)
        if v is not None and not (isinstance(v, int | float) and lo <= v <= hi):
            bad(name, "number_range", f"Must be between {lo} and {hi}")
    return out


# Replicate takes files as HTTP URLs or data URIs; the emulator checks data URIs and never fetches.
MAX_DATA_URI_BYTES = 20 * 1024 * 1024


def _file_input(inp: dict[str, Any], name: str, bad: Any) -> tuple[int, int] | None:
    value = inp.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        bad(name, "invalid", "URL inputs are not emulated (the gateway sends data URIs)")
        return None
    info, problem = input_problem(image_field(value), name, max_bytes=MAX_DATA_URI_BYTES)
    if problem is not None or info is None:
        bad(name, "invalid", problem or "invalid image")
        return None
    return info.width, info.height
