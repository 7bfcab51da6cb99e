"""fal.ai queue API emulator: submit, status (202 pending / 200 done), result, cancel, CDN."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.emulators.base import (
    Emulator,
    edited_image,
    image_bytes_size,
    image_field,
    input_problem,
    new_id,
    whole_megapixels,
)
from imagegate.providerkit.kontext import KONTEXT_SIZES
from imagegate.providerkit.types import OutputFormat

# Preset sizes; only landscape_4_3 is confirmed by recorded traffic (contracts 2.4).
PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
# Per-endpoint input limits (fal model pages); fast-sdxl allows up to 8 images.
STEP_LIMITS = {"fal-ai/flux/schnell": 12, "fal-ai/flux/dev": 50, "fal-ai/fast-sdxl": 50}
MAX_IMAGES = {"fal-ai/fast-sdxl": 8}
I2I = "fal-ai/flux/dev/image-to-image"
KONTEXT = "fal-ai/flux-pro/kontext"
KONTEXT_MULTI = "fal-ai/flux-pro/kontext/multi"
FILL = "fal-ai/flux-pro/v1/fill"
EDIT_ENDPOINTS = (I2I, KONTEXT, KONTEXT_MULTI, FILL)
ENDPOINTS = (
    "fal-ai/flux/schnell",
    "fal-ai/flux/dev",
    "fal-ai/flux-pro/v1.1",
    "fal-ai/fast-sdxl",
    *EDIT_ENDPOINTS,
)
# Largest inline (data URI) input the emulator takes; fal documents no figure ([U]).
MAX_INPUT_BYTES = 20 * 1024 * 1024
# What fal charges, micro-USD: per megapixel of output rounded up per image (model pages), or
# per image for fast-sdxl (no published price; the figure the catalog assumes) and Kontext.
PRICES = {
    "fal-ai/flux/schnell": ("megapixel", "3000"),
    "fal-ai/flux/dev": ("megapixel", "25000"),
    "fal-ai/flux-pro/v1.1": ("megapixel", "40000"),
    "fal-ai/fast-sdxl": ("image", "2500"),
    I2I: ("megapixel", "30000"),
    KONTEXT: ("image", "40000"),
    KONTEXT_MULTI: ("image", "40000"),
    FILL: ("megapixel", "50000"),
}
LOCKED = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing"
)


@dataclass
class FalJob:
    """One queued request."""

    id: str
    endpoint: str
    app_root: str
    input: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    queue_positions: list[int] = field(default_factory=list)
    started: float | None = None
    status_polls: int = 0
    cancelled: bool = False
    never_complete: bool = False
    moderated: bool = False
    malformed_result: bool = False
    result: dict[str, Any] | None = None
    inference_time: float = 0.0
    billed: bool = False


class FalEmulator(Emulator):
    """Emulates https://queue.fal.run with `Authorization: Key <FAL_KEY>`."""

    name = "fal"
    expired_status = 404

    def __init__(self, *, latency: float = 0.0, key: str | None = None, queue_depth: int = 1):
        super().__init__(latency=latency, key=key)
        self.queue_depth = queue_depth
        """Requests ahead of each new job (reported as IN_QUEUE queue_position, counting down)."""
        self.jobs: dict[str, FalJob] = {}
        """Jobs by request id."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{owner}/{app}/requests/{id}/status", self._status)
        app.router.add_put("/{owner}/{app}/requests/{id}/cancel", self._cancel)
        app.router.add_get("/{owner}/{app}/requests/{id}", self._result)
        app.router.add_post("/{endpoint:.+}", self._submit)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Key" and self.credential_ok(token)

    def _guard(self, request: web.Request) -> web.Response | None:
        if self.faults.take("auth_failed") or not self.authorized(request):
            return self.json_response(
                {"detail": "No user found for Key ID and Secret"},
                401,
                {"X-Fal-Error-Type": "authentication_error"},
            )
        if self.faults.take("out_of_credits"):
            return self.json_response({"detail": LOCKED}, 403)
        return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        if fault := self.faults.take("rate_limit"):
            return self.json_response(
                {"detail": "Too many concurrent requests"}, 429, self.retry_after_headers(fault)
            )
        if fault := self.faults.take("error_500", "error_502", "error_503"):
            status = int(fault.kind.removeprefix("error_"))
            headers = self.retry_after_headers(fault) if status == 503 else {}
            if status == 500:
                return self.json_response(
                    {"detail": "Internal server error", "error_type": "internal_error"}, 500
                )
            # Ingress errors: an nginx page and no x-fal-request-id (fal_client's heuristic).
            return web.Response(
                status=status,
                text=f"<html><body><h1>{status}</h1>nginx</body></html>",
                content_type="text/html",
                headers=headers,
            )
        if self.faults.take("hang"):
            return await self.hang()
        endpoint = request.match_info["endpoint"].strip("/")
        if endpoint not in ENDPOINTS:
            return self.json_response({"detail": f"Application '{endpoint}' not found"}, 404)
        try:
            body = await request.json()
        except ValueError:
            return self.json_response({"detail": "Invalid JSON body"}, 400)
        errors = (
            _validate_edit(endpoint, body)
            if endpoint in EDIT_ENDPOINTS
            else _validate(endpoint, body)
        )
        if errors:
            return self.json_response({"detail": errors}, 422)
        owner, app = endpoint.split("/")[:2]
        job = FalJob(
            id=new_id(),
            endpoint=endpoint,
            app_root=f"{owner}/{app}",
            input=body,
            queue_positions=list(range(self.queue_depth, -1, -1)),
            never_complete=bool(self.faults.take("never_complete")),
            moderated=bool(self.faults.take("moderation")),
            malformed_result=bool(self.faults.take("malformed_json")),
        )
        self.jobs[job.id] = job
        base = f"{self.base_url}/{job.app_root}/requests/{job.id}"
        return self.json_response(
            {
                "request_id": job.id,
                "status": "IN_QUEUE",
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": job.queue_positions[0],
            },
            200,
            {"x-fal-request-id": job.id},
        )

    def _job(self, request: web.Request) -> FalJob | None:
        job = self.jobs.get(request.match_info["id"])
        root = f"{request.match_info['owner']}/{request.match_info['app']}"
        return job if job is not None and job.app_root == root else None

    async def _status(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        job = self._job(request)
        if job is None:
            return self.json_response({"detail": "Request not found"}, 404)
        job.status_polls += 1
        base = f"{self.base_url}/{job.app_root}/requests/{job.id}"
        if job.cancelled:
            return self.json_response(
                {
                    "status": "COMPLETED",
                    "error": "Request was cancelled",
                    "error_type": "cancelled",
                },
                200,
            )
        if job.queue_positions:
            position = job.queue_positions.pop(0)
            return self.json_response(
                {"status": "IN_QUEUE", "queue_position": position, "response_url": base}, 202
            )
        if job.started is None:
            # The first poll after leaving the queue always sees the job running.
            job.started = time.monotonic()
            return self.json_response(
                {"status": "IN_PROGRESS", "logs": [], "response_url": base}, 202
            )
        if job.never_complete or time.monotonic() - job.started < self.latency:
            return self.json_response(
                {"status": "IN_PROGRESS", "logs": [], "response_url": base}, 202
            )
        if job.result is None and not job.moderated:
            job.result = self._render(job)
        if not job.billed:
            # A completed request is charged by its output, also when the content checker
            # flagged it (the GPU time was spent: contracts 2.5, "422 may be charged").
            job.billed = True
            self._bill(job)
        body: dict[str, Any] = {
            "status": "COMPLETED",
            "logs": [],
            "metrics": {"inference_time": job.inference_time},
            "response_url": base,
        }
        if job.moderated:
            body.update(
                error="The content could not be processed because it contained material "
                "flagged by a content checker.",
                error_type="content_policy_violation",
            )
        return self.json_response(body, 200)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        job = self._job(request)
        if job is None:
            return self.json_response({"detail": "Request not found"}, 404)
        headers = {"x-fal-request-id": job.id, "x-fal-billable-units": "1"}
        if job.moderated:
            return self.json_response(
                {
                    "detail": [
                        {
                            "loc": ["body", "prompt"],
                            "msg": "The content could not be processed because it contained "
                            "material flagged by a content checker.",
                            "type": "content_policy_violation",
                            "ctx": {"categories": ["sexual"]},
                        }
                    ]
                },
                422,
                {**headers, "X-Fal-Retryable": "false"},
            )
        if job.result is None:
            return self.json_response({"detail": "Request is still in progress"}, 400, headers)
        if job.malformed_result:
            return self.malformed_json(200, headers)
        return self.json_response(job.result, 200, headers)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        job = self._job(request)
        if job is None:
            return self.json_response({"status": "NOT_FOUND"}, 404)
        if job.result is not None:
            return self.json_response({"status": "ALREADY_COMPLETED"}, 400)
        job.cancelled = True
        return self.json_response({"status": "CANCELLATION_REQUESTED"}, 202)

    def _size(self, job: FalJob) -> tuple[int, int]:
        size = job.input.get("image_size", "landscape_4_3")
        width, height = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
        source = _source(job.input)
        if job.endpoint in (KONTEXT, KONTEXT_MULTI):
            width, height = KONTEXT_SIZES[job.input.get("aspect_ratio", "1:1")]
        elif source:
            # Image-to-image and fill answer at their input's size.
            width, height = image_bytes_size(source)
        return width, height

    def _bill(self, job: FalJob) -> None:
        unit, price = PRICES[job.endpoint]
        n = int(job.input.get("num_images", 1))
        if unit == "image":
            self.charge(job.id, job.endpoint, n, unit, price)
        else:
            self.charge(job.id, job.endpoint, n * whole_megapixels(*self._size(job)), unit, price)

    def _render(self, job: FalJob) -> dict[str, Any]:
        width, height = self._size(job)
        source = _source(job.input)
        fmt = OutputFormat.PNG if job.input.get("output_format") == "png" else OutputFormat.JPEG
        seed = int(job.input.get("seed", 3131504498))
        images = []
        for i in range(int(job.input.get("num_images", 1))):
            data, declared, actual = self.result_image(width, height, fmt, seed + i)
            if source and declared == fmt.mime_type:
                data = edited_image(source, width, height, fmt, seed + i)
            # fal's content_type field is known to contradict the file: mimic that.
            label = "image/jpeg" if actual is OutputFormat.PNG else declared
            ext = "png" if declared == "image/png" else "jpeg"
            url = self.store_file(data, declared, suffix=f".{ext}")
            images.append({"url": url, "width": width, "height": height, "content_type": label})
        job.inference_time = 0.05 + 0.01 * len(images)
        return {
            "images": images,
            "timings": {"inference": job.inference_time},
            "seed": seed,
            "has_nsfw_concepts": [False] * len(images),
            "prompt": job.input.get("prompt", ""),
        }


def _validate(endpoint: str, body: Any) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def bad(field: str, msg: str, kind: str, value: Any) -> None:
        errors.append({"loc": ["body", field], "msg": msg, "type": kind, "input": value})

    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be an object", "type": "dict_type"}]
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        bad("prompt", "Field required", "missing", body.get("prompt"))
    size = body.get("image_size", "landscape_4_3")
    if isinstance(size, str):
        if size not in PRESETS:
            bad("image_size", f"Input should be one of {', '.join(PRESETS)}", "enum", size)
    elif not (
        isinstance(size, dict)
        and all(
            isinstance(size.get(k), int) and 64 <= size[k] <= 14142 for k in ("width", "height")
        )
    ):
        bad("image_size", "width and height must be integers", "value_error", size)
    steps = body.get("num_inference_steps")
    limit = STEP_LIMITS.get(endpoint)
    if steps is not None and (limit is None or not 1 <= steps <= limit):
        msg = "Extra inputs are not permitted" if limit is None else f"Input should be <= {limit}"
        bad("num_inference_steps", msg, "less_than_equal" if limit else "extra_forbidden", steps)
    if "guidance_scale" in body and endpoint == "fal-ai/flux-pro/v1.1":
        bad(
            "guidance_scale",
            "Extra inputs are not permitted",
            "extra_forbidden",
            body["guidance_scale"],
        )
    n = body.get("num_images", 1)
    if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES.get(endpoint, 4):
        bad("num_images", "Input should be <= 4", "less_than_equal", n)
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        bad("output_format", "Input should be 'jpeg' or 'png'", "enum", body.get("output_format"))
    if "negative_prompt" in body and endpoint != "fal-ai/fast-sdxl":
        bad("negative_prompt", "Extra inputs are not permitted", "extra_forbidden", "...")
    return errors


def _source(body: dict[str, Any]) -> bytes:
    urls = body.get("image_urls")
    first = urls[0] if isinstance(urls, list) and urls else body.get("image_url")
    return image_field(first) or b""


def _validate_edit(endpoint: str, body: Any) -> list[dict[str, Any]]:
    """fal's edit endpoints: inline images (data URIs here), strength, mask of the image's size."""
    errors: list[dict[str, Any]] = []

    def bad(name: str, msg: str, kind: str, value: Any) -> None:
        errors.append({"loc": ["body", name], "msg": msg, "type": kind, "input": value})

    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be an object", "type": "dict_type"}]
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        bad("prompt", "Field required", "missing", body.get("prompt"))
    if "image_size" in body:
        bad("image_size", "Extra inputs are not permitted", "extra_forbidden", "...")

    def image(name: str, value: Any) -> tuple[int, int] | None:
        if value is None:
            bad(name, "Field required", "missing", None)
            return None
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            bad(
                name,
                "URL inputs are not emulated (the gateway sends data URIs)",
                "value_error",
                "...",
            )
            return None
        info, problem = input_problem(image_field(value), name, max_bytes=MAX_INPUT_BYTES)
        if problem is not None or info is None:
            bad(name, problem or "invalid image", "value_error", "...")
            return None
        return info.width, info.height

    if endpoint == KONTEXT_MULTI:
        urls = body.get("image_urls")
        if not isinstance(urls, list) or not urls:
            bad("image_urls", "Field required", "missing", urls)
        else:
            for i, url in enumerate(urls):
                image(f"image_urls[{i}]", url)
    else:
        size = image("image_url", body.get("image_url"))
        if endpoint == FILL:
            mask = image("mask_url", body.get("mask_url"))
            if size and mask and size != mask:
                bad(
                    "mask_url",
                    f"mask is {mask[0]}x{mask[1]}, image is {size[0]}x{size[1]}",
                    "value_error",
                    "...",
                )
    if endpoint in (KONTEXT, KONTEXT_MULTI):
        ratio = body.get("aspect_ratio", "1:1")
        if ratio not in KONTEXT_SIZES:
            bad("aspect_ratio", f"Input should be one of {', '.join(KONTEXT_SIZES)}", "enum", ratio)
        for name in ("num_inference_steps", "strength"):
            if name in body:
                bad(name, "Extra inputs are not permitted", "extra_forbidden", body[name])
    if endpoint == I2I:
        strength = body.get("strength", 0.95)
        if not isinstance(strength, int | float) or not 0.01 <= strength <= 1:
            bad("strength", "Input should be between 0.01 and 1", "value_error", strength)
        steps = body.get("num_inference_steps")
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= 50):
            bad("num_inference_steps", "Input should be <= 50", "less_than_equal", steps)
    n = body.get("num_images", 1)
    if not isinstance(n, int) or not 1 <= n <= 4:
        bad("num_images", "Input should be <= 4", "less_than_equal", n)
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        bad("output_format", "Input should be 'jpeg' or 'png'", "enum", body.get("output_format"))
    return errors
