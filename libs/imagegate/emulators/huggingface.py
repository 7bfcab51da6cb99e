"""Emulator of the Hugging Face router: hf-inference raw image bytes and the Together route."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, Fault, new_id
from imagegate.emulators.together import handle_generation
from imagegate.providerkit.types import OutputFormat

SD21 = "stabilityai/stable-diffusion-2-1"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
# model -> default side (the pipelines' native resolution)
INFERENCE_MODELS: dict[str, int] = {SD21: 768, SDXL: 1024}
# hf-inference GPU rate, micro-USD per second (HF pricing docs: $0.00012/s).
INFERENCE_PRICE = "120"
_MAX_SIDE = 2048
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

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/hf-inference/models/{model_id:.+}", self._inference)
        app.router.add_post("/together/v1/images/generations", self._together)

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
