"""Emulator of the Hugging Face router: hf-inference raw image bytes, the Together, fal-ai,
nscale and Replicate partner routes, and the Hub API's provider mapping (for "auto")."""

from __future__ import annotations

import base64
import json
import math
import re
from decimal import Decimal
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, Fault, new_id
from imagegate.emulators.replicate import ReplicateEmulator
from imagegate.emulators.together import handle_generation
from imagegate.providerkit.types import OutputFormat

SD21 = "stabilityai/stable-diffusion-2-1"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
# model -> default side (the pipelines' native resolution)
INFERENCE_MODELS: dict[str, int] = {SD21: 768, SDXL: 1024}
# hf-inference GPU rate, micro-USD per second (HF pricing docs: $0.00012/s).
INFERENCE_PRICE = "120"
_MAX_SIDE = 2048
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
# HF model -> partner -> the partner's own model id (the Hub's providerId).
PARTNER_IDS: dict[str, dict[str, str]] = {
    FLUX_SCHNELL: {
        "together": FLUX_SCHNELL,
        "fal-ai": "fal-ai/flux/schnell",
        "nscale": FLUX_SCHNELL,
        "replicate": "black-forest-labs/flux-schnell",
    }
}
FAL_APPS = frozenset({"fal-ai/flux/schnell", "fal-ai/flux/dev"})
NSCALE_MODELS = frozenset({FLUX_SCHNELL})
_CREDITS_MESSAGE = (
    "You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
)


def hf_error(payload: dict[str, Any], status: int, **headers: str) -> web.Response:
    """An HF error answer in one of its documented body shapes."""
    return Emulator.json_response(payload, status, headers=headers)


class HuggingFaceEmulator(Emulator):
    """router.huggingface.co: Bearer hf_ auth, raw image bytes, x-compute-time, partner pass-through.

    hf-inference answers JPEG whatever the Accept header asks for, as the recorded traffic did.
    """

    name = "huggingface"

    def __init__(self, *, latency: float = 0.0, key: str | None = None) -> None:
        super().__init__(latency=latency, key=key)
        self.loading_model: str | None = None
        """When set, hf-inference answers 503 "currently loading" for this model."""
        self.estimated_time = 20.0
        """`estimated_time` of the loading answer."""
        self.provider_order: list[str] = ["together", "fal-ai", "nscale"]
        """The account's Inference Provider order the Hub API reports."""
        # Replicate behind the router: the Replicate emulator's own handlers, sharing this
        # server's faults, files and lifetime (wired in `start`).
        self._replicate = ReplicateEmulator(latency=latency, key=key)
        self._replicate.faults = self.faults
        self._replicate.files = self.files

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        base = await super().start(host, port)
        rep = self._replicate
        rep._base_url = f"{base}/replicate"  # urls.get / urls.cancel go through the router
        rep._stopping = self._stopping
        rep.latency = self.latency
        rep.host, rep.port = self.host, self.port
        # Result files live on this server's CDN path.
        rep.store_file = self.store_file  # type: ignore[method-assign]
        return base

    async def _replicate_create(self, request: web.Request) -> web.StreamResponse:
        refused = self._router_layer(request)
        if refused is not None:
            return refused
        return await self._replicate._create_official(request)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/hf-inference/models/{model_id:.+}", self._inference)
        app.router.add_post("/together/v1/images/generations", self._together)
        app.router.add_post("/fal-ai/{app:.+}", self._fal)
        app.router.add_post("/nscale/v1/images/generations", self._nscale)
        app.router.add_post(
            "/replicate/v1/models/{owner}/{name}/predictions", self._replicate_create
        )
        app.router.add_get("/replicate/v1/predictions/{id}", self._replicate._get)
        app.router.add_post("/replicate/v1/predictions/{id}/cancel", self._replicate._cancel)
        # The Hub API (huggingface.co) on the same server: the account's provider order.
        app.router.add_get("/api/models/{model_id:.+}", self._mapping)

    async def _mapping(self, request: web.Request) -> web.Response:
        """GET /api/models/{id}?expand[]=inferenceProviderMapping, in `provider_order`."""
        if not self.authorized(request):
            return hf_error({"error": "Invalid credentials in Authorization header"}, 401)
        model = request.match_info["model_id"]
        ids = PARTNER_IDS.get(model)
        if ids is None:
            return hf_error({"error": f"{model} does not exist"}, 404)
        mapping = [
            {"provider": p, "providerId": ids[p], "status": "live", "task": "text-to-image"}
            for p in self.provider_order
            if p in ids
        ]
        return self.json_response({"id": model, "inferenceProviderMapping": mapping})

    async def _partner_fault(self, request: web.Request, problem: Any) -> web.StreamResponse | None:
        """Faults a partner answers before rendering, in the partner's `{"detail"}` shape."""
        refused = self._router_layer(request)
        if refused is not None:
            return refused
        rid = {"x-request-id": new_id("req-")}
        if f := self.faults.take("rate_limit"):
            return hf_error(
                {"detail": "Rate limit exceeded"}, 429, **rid, **self.retry_after_headers(f)
            )
        if self.faults.take("error_500"):
            return hf_error({"detail": "Internal server error"}, 500, **rid)
        if self.faults.take("error_502"):
            return web.Response(
                status=502,
                text="<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
            )
        if f := self.faults.take("error_503"):
            return hf_error(
                {"detail": "Service temporarily unavailable"},
                503,
                **rid,
                **self.retry_after_headers(f),
            )
        if self.faults.take("hang", "never_complete"):
            return await self.hang()
        if problem is not None:
            return hf_error({"detail": problem}, 422, **rid)
        return None

    async def _fal(self, request: web.Request) -> web.StreamResponse:
        """fal's synchronous run behind the router: images[] as data URIs (sync_mode) or URLs."""
        app = request.match_info["app"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem: Any = None
        if app not in FAL_APPS:
            problem = f"Application '{app}' not found"
        elif not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            problem = [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]
        refused = await self._partner_fault(request, problem)
        if refused is not None:
            return refused
        assert isinstance(body, dict)
        await self.generation_delay()
        size = body.get("image_size") or {"width": 1024, "height": 768}
        width, height = int(size["width"]), int(size["height"])
        fmt = OutputFormat.PNG if body.get("output_format") == "png" else OutputFormat.JPEG
        raw_seed = body.get("seed")
        seed = raw_seed if isinstance(raw_seed, int) else 1234
        expired = self.faults.take("expired_url") is not None
        moderated = self.faults.take("moderation") is not None
        images = []
        for i in range(int(body.get("num_images", 1))):
            data, declared, _ = self.result_image(width, height, fmt, seed + i)
            if body.get("sync_mode") and not expired:
                url = f"data:{declared};base64,{base64.b64encode(data).decode()}"
            else:
                url = self.store_file(data, declared, ttl=0.0 if expired else 3600.0)
            images.append({"url": url, "width": width, "height": height, "content_type": declared})
        payload = {
            "images": images,
            "timings": {"inference": 0.05 + self.latency},
            "seed": seed,
            "has_nsfw_concepts": [moderated] * len(images),
            "prompt": body["prompt"],
        }
        headers = {"x-fal-request-id": new_id()}
        if self.faults.take("malformed_json"):
            return self.malformed_json(headers=headers)
        if self.faults.take("slow_body"):
            return await self.slow(request, json.dumps(payload).encode(), headers=headers)
        return self.json_response(payload, headers=headers)

    async def _nscale(self, request: web.Request) -> web.StreamResponse:
        """Nscale's OpenAI-style images/generations behind the router: data[].b64_json."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        problem = _nscale_problem(body)
        refused = await self._partner_fault(request, problem)
        if refused is not None:
            return refused
        assert isinstance(body, dict)
        if self.faults.take("moderation"):
            return hf_error(
                {"detail": "The prompt was rejected by the content policy filter."},
                400,
            )
        await self.generation_delay()
        width, height = (int(v) for v in body["size"].split("x"))
        raw_seed = body.get("seed")
        seed = raw_seed if isinstance(raw_seed, int) else 0
        expired = self.faults.take("expired_url") is not None
        data = []
        for index in range(int(body.get("n", 1))):
            image, declared, _ = self.result_image(width, height, OutputFormat.PNG, seed + index)
            if expired:
                data.append({"url": self.store_file(image, declared, ttl=0.0)})
            else:
                data.append({"b64_json": base64.b64encode(image).decode()})
        payload = {"created": 1764720000, "data": data}
        headers = {"x-request-id": new_id("ns-")}
        if self.faults.take("malformed_json"):
            return self.malformed_json(headers=headers)
        if self.faults.take("slow_body"):
            return await self.slow(request, json.dumps(payload).encode(), headers=headers)
        return self.json_response(payload, headers=headers)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.credential_ok(token)

    def _router_layer(self, request: web.Request) -> web.Response | None:
        """What the router itself refuses before any provider sees the call."""
        if not self.authorized(request) or self.faults.take("auth_failed"):
            return hf_error(
                {"error": "Invalid credentials in Authorization header"},
                401,
                **{"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        if self.faults.take("out_of_credits"):
            return hf_error({"error": _CREDITS_MESSAGE}, 402)
        return None

    async def _together(self, request: web.Request) -> web.StreamResponse:
        refused = self._router_layer(request)
        if refused is not None:
            return refused
        # Past the router the partner answers in its own shapes, faults included.
        return await handle_generation(self, request, check_auth=False)

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        rid = {"x-request-id": new_id("Root=1-")}
        refused = self._router_layer(request)
        if refused is not None:
            return refused
        model = request.match_info["model_id"]
        if model not in INFERENCE_MODELS:
            return hf_error(
                {"error": f"Model {model} does not exist"},
                404,
                **rid,
                **{"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        if f := self.faults.take("rate_limit"):
            return hf_error(
                {"error": "You have reached the rate limit for inference requests."},
                429,
                **rid,
                **self.retry_after_headers(f),
                **{
                    "RateLimit": '"api";r=0;t=60',
                    "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
                },
            )
        if self.faults.take("error_500"):
            return hf_error(
                {"error": ["Internal error while running the pipeline", "CUDA out of memory"]},
                500,
                **rid,
            )
        if self.faults.take("error_502"):
            return web.Response(
                status=502,
                text="<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
            )
        if f := self.faults.take("error_503"):
            return self._loading(model, f, rid)
        if self.loading_model == model:
            return self._loading(model, Fault("error_503", retry_after=self.estimated_time), rid)
        if self.faults.take("hang", "never_complete"):
            return await self.hang()
        try:
            body = await request.json()
        except ValueError:
            return hf_error({"errors": [{"message": "Request body is not valid JSON"}]}, 400, **rid)
        problem = self._validate(body)
        if problem is not None:
            return hf_error({"error": [problem]}, 400, **rid)
        if self.faults.take("moderation"):
            # Unconfirmed upstream shape: the safety checker's own wording in a 400.
            return hf_error(
                {
                    "error": "Potential NSFW content was detected in one or more images. "
                    "Try again with a different prompt and/or seed."
                },
                400,
                **rid,
            )
        await self.generation_delay()
        params = body.get("parameters") or {}
        side = INFERENCE_MODELS[model]
        width, height = int(params.get("width", side)), int(params.get("height", side))
        steps = int(params.get("num_inference_steps", 30))
        raw_seed = params.get("seed")
        seed = raw_seed if isinstance(raw_seed, int) else 0
        image, declared, _ = self.result_image(width, height, OutputFormat.JPEG, seed)
        compute = f"{self._compute_time(width, height, steps):.3f}"
        # hf-inference charges compute time x the hardware rate, per call (HF pricing docs).
        self.charge(rid["x-request-id"], model, Decimal(compute), "second", INFERENCE_PRICE)
        headers = {
            **rid,
            "x-compute-time": compute,
            "x-compute-type": "gpu",
            "x-sha": "5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06",
        }
        if self.faults.take("malformed_json"):
            return self.malformed_json(headers=headers)
        if self.faults.take("slow_body"):
            return await self.slow(request, image, content_type=declared, headers=headers)
        return web.Response(body=image, content_type=declared, headers=headers)

    def _loading(self, model: str, fault: Fault, rid: dict[str, str]) -> web.Response:
        wait = fault.retry_after if fault.retry_after is not None else self.estimated_time
        return hf_error(
            {"error": f"Model {model} is currently loading", "estimated_time": wait},
            503,
            **rid,
        )

    def _compute_time(self, width: int, height: int, steps: int) -> float:
        return self.latency + max(0.001, width * height / 1e6 * steps * 0.05)

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Error in body: must be an object"
        if not isinstance(body.get("inputs"), str) or not body["inputs"]:
            return "Error in `inputs`: field required"
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return "Error in `parameters`: must be an object"
        for side in ("width", "height"):
            value = params.get(side, 512)
            if not isinstance(value, int) or value % 8 or not 64 <= value <= _MAX_SIDE:
                return f"Error in `parameters.{side}`: must be a multiple of 8, 64 to {_MAX_SIDE}"
        steps = params.get("num_inference_steps", 30)
        if not isinstance(steps, int) or not 1 <= steps <= 150:
            return "Error in `parameters.num_inference_steps`: must be 1 to 150"
        guidance = params.get("guidance_scale", 7.5)
        if not isinstance(guidance, int | float) or not math.isfinite(guidance):
            return "Error in `parameters.guidance_scale`: must be a number"
        return None


_NSCALE_SIZE = re.compile(r"(\d+)x(\d+)")


def _nscale_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if body.get("model") not in NSCALE_MODELS:
        return f"model {body.get('model')!r} is not available"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt is required"
    size = body.get("size", "")
    match = _NSCALE_SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None or not all(64 <= int(v) <= 2048 for v in match.groups()):
        return "size must be WIDTHxHEIGHT, each side 64 to 2048"
    if body.get("response_format", "b64_json") not in ("b64_json", "url"):
        return "response_format must be b64_json or url"
    if "num_inference_steps" in body or "steps" in body:
        return "unknown field: steps"
    return None
