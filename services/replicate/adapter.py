"""The Replicate Adapter: create with `Prefer: wait`, poll urls.get, cancel late predictions."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.inputs.encoding import data_uri
from imagegate.inputs.masks import resized
from imagegate.providerkit.download import download_images
from imagegate.providerkit.errors import BilledUsage, ProviderError, bad_answer
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import Pending, error_from_status, json_object, poll_until, send
from imagegate.providerkit.jobs import cancel_at_deadline, poll_get
from imagegate.providerkit.kontext import KONTEXT_RATIOS
from imagegate.providerkit.params import steps_and_guidance
from imagegate.providerkit.types import (
    Deviation,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    OutputFormat,
    PriceUnit,
    Progress,
    ProgressSink,
    SizeRule,
)
from imagegate.telemetry import Telemetry
from services.replicate.config import ReplicateSettings

# FLUX schnell/dev take no width/height: output size follows aspect_ratio and megapixels.
# Sizes at "1" MP are replicate/cog-flux's table; 4:3, 3:4 and the "0.25" MP sizes are [U].
_FLUX_1MP = {
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
FLUX_SIZES: dict[tuple[int, int], tuple[str, str]] = {
    **{wh: ("1", ar) for ar, wh in _FLUX_1MP.items()},
    **{(w // 32 * 16, h // 32 * 16): ("0.25", ar) for ar, (w, h) in _FLUX_1MP.items()},
}
SCHNELL, DEV, PRO, SDXL = (
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-dev",
    "black-forest-labs/flux-pro",
    "stability-ai/sdxl",
)
KONTEXT_PRO = "black-forest-labs/flux-kontext-pro"
FILL_PRO = "black-forest-labs/flux-fill-pro"
_ALL_FORMATS = (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP)
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id=SCHNELL,
        sizes=SizeRule(min_side=256, max_side=1536, fixed=tuple(FLUX_SIZES)),
        guidance=False,
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.IMAGE,
    ),
    ModelSpec(
        id=DEV,
        sizes=SizeRule(min_side=256, max_side=1536, fixed=tuple(FLUX_SIZES)),
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.IMAGE,
    ),
    ModelSpec(
        id=PRO,
        sizes=SizeRule(min_side=256, max_side=1440, multiple=32),
        max_images=1,
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.IMAGE,
    ),
    # SDXL takes `image` (+ `prompt_strength`) and `mask` (white repaints) and then answers at the
    # image's size: the adapter resizes the input to the asked size first.
    ModelSpec(
        id=SDXL,
        sizes=SizeRule(min_side=256, max_side=2048, multiple=8, max_pixels=2048 * 2048),
        negative_prompt=True,
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.COMPUTE_SECOND,
        image_to_image=True,
        inpainting=True,
        strength=True,
    ),
)
MODELS = (
    *MODELS,
    # Official BFL models on Replicate: one output (a single URI), inputs as data URIs.
    ModelSpec(
        id=KONTEXT_PRO,
        sizes=SizeRule(min_side=672, max_side=1568, fixed=tuple(KONTEXT_RATIOS)),
        max_images=1,
        steps=False,
        guidance=False,
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.IMAGE,
        max_reference_images=1,
    ),
    # Fill answers at its input's size: the adapter resizes image and mask to the asked size.
    ModelSpec(
        id=FILL_PRO,
        sizes=SizeRule(min_side=256, max_side=2048, multiple=1),
        max_images=1,
        formats=_ALL_FORMATS,
        price_unit=PriceUnit.IMAGE,
        inpainting=True,
        input_image_required=True,
    ),
)
STEPS = {SCHNELL: (1, 4), DEV: (1, 50), PRO: (1, 50), SDXL: (1, 500), FILL_PRO: (15, 50)}
GUIDANCE = {DEV: (0.0, 10.0), PRO: (2.0, 5.0), SDXL: (1.0, 50.0), FILL_PRO: (1.5, 100.0)}
# Kontext and Fill encode jpg or png; WebP is converted from lossless PNG.
_BFL_FORMAT = {OutputFormat.PNG: "png", OutputFormat.JPEG: "jpg", OutputFormat.WEBP: "png"}
_OUTPUT_FORMAT = {OutputFormat.PNG: "png", OutputFormat.JPEG: "jpg", OutputFormat.WEBP: "webp"}
_TERMINAL = ("succeeded", "failed", "canceled", "aborted")
# Replicate's safety checkers fail the prediction with prose, not a code (contracts 3.4, [U]).
_NSFW = re.compile(r"nsfw|safety|sensitive|flagged|inappropriate", re.IGNORECASE)
_THROTTLE = re.compile(r"resets in ~?(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
# Prefer: wait is held at most this long, and ends this much before our deadline.
_MAX_WAIT = 60
_WAIT_MARGIN = 1.0


class ReplicateAdapter(HostedAdapter[ReplicateSettings]):
    """Replicate predictions, `Authorization: Bearer <REPLICATE_API_TOKEN>`."""

    name = "replicate"

    def __init__(self, settings: ReplicateSettings, *, telemetry: Telemetry | None = None) -> None:
        super().__init__(
            settings,
            headers={"authorization": f"Bearer {settings.key_value()}"},
            max_connections=settings.max_concurrency * 2,
            telemetry=telemetry,
        )

    def models(self) -> list[ModelSpec]:
        return list(MODELS)

    def build_input(self, request: GenerationRequest) -> tuple[dict[str, Any], list[Deviation]]:
        """The model input for a validated request, and parameters clamped under degradation."""
        inp: dict[str, Any] = {"prompt": request.prompt}
        model = request.model
        if model in (SCHNELL, DEV):
            megapixels, aspect = FLUX_SIZES[(request.width, request.height)]
            inp |= {
                "aspect_ratio": aspect,
                "megapixels": megapixels,
                "num_outputs": request.num_images,
                "output_format": _OUTPUT_FORMAT[request.output_format],
                "output_quality": 95,
                "disable_safety_checker": False,
                # go_fast (fp8) makes output non-deterministic even with a seed.
                "go_fast": request.seed is None,
            }
        elif model == KONTEXT_PRO:
            inp |= {
                "aspect_ratio": KONTEXT_RATIOS[(request.width, request.height)],
                "output_format": _BFL_FORMAT[request.output_format],
                "safety_tolerance": 2,
            }
            if request.reference_images:
                inp["input_image"] = data_uri(request.reference_images[0])
        elif model == FILL_PRO:
            size = (request.width, request.height)
            inp |= {
                "image": data_uri(resized(request.image, size)),
                "output_format": _BFL_FORMAT[request.output_format],
            }
            if request.mask:
                inp["mask"] = data_uri(resized(request.mask, size))
        elif model == PRO:
            inp |= {
                "aspect_ratio": "custom",
                "width": request.width,
                "height": request.height,
                "output_format": _OUTPUT_FORMAT[request.output_format],
                "output_quality": 95,
            }
        else:
            inp |= {
                "width": request.width,
                "height": request.height,
                "num_outputs": request.num_images,
            }
            if request.negative_prompt:
                inp["negative_prompt"] = request.negative_prompt
            if request.image:
                # Inline data URIs: the gateway never hands a provider a caller's URL.
                size = (request.width, request.height)
                inp["image"] = data_uri(resized(request.image, size))
                if request.mask:
                    inp["mask"] = data_uri(resized(request.mask, size))
                if request.strength is not None:
                    inp["prompt_strength"] = request.strength
        if request.seed is not None:
            inp["seed"] = request.seed
        steps, scale, deviations = steps_and_guidance(request, STEPS, GUIDANCE)
        if steps is not None:
            inp["steps" if model in (PRO, FILL_PRO) else "num_inference_steps"] = steps
        if scale is not None:
            inp["guidance_scale" if model == SDXL else "guidance"] = scale
        return inp, deviations

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if request.image or request.reference_images:
            # Input images may be resized and re-encoded: off the event loop.
            inp, deviations = await asyncio.to_thread(self.build_input, request)
        else:
            inp, deviations = self.build_input(request)
        pred = await self._create(request, inp, deadline)
        job_id = str(pred.get("id") or "")
        if progress is not None:
            await progress(Progress(state=str(pred.get("status", "")), provider_job_id=job_id))
        if not self._usable(pred, request.num_images):
            pred = await self._wait(pred, request, deadline, progress)
        metrics = pred.get("metrics")
        seconds = metrics.get("predict_time") if isinstance(metrics, dict) else None
        try:
            output = self._outputs(pred, request.num_images, job_id)
            images = await download_images(
                self._client,
                output,
                self._results_from(self._settings.result_hosts),
                deadline=deadline,
                wanted=request.output_format,
                first_seed=request.seed,
                job_id=job_id,
            )
        except ProviderError as err:
            if err.billable and err.billed is None:
                # What Replicate bills for the prediction it ran: its outputs (official models)
                # or its predict_time (per-second models), even when we cannot use them.
                made = len([o for o in _as_list(pred.get("output")) if isinstance(o, str)])
                err.billed = BilledUsage(
                    images=made,
                    megapixels=made * request.width * request.height / 1_000_000,
                    provider_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
                )
            raise
        return GenerationResult(
            images=images,
            provider_job_id=job_id,
            provider_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
            deviations=deviations,
            model=request.model,
        )

    async def _create(
        self, request: GenerationRequest, inp: dict[str, Any], deadline: Deadline
    ) -> dict[str, Any]:
        """One create, never retried: a create that may have been accepted may be billed."""
        remaining = deadline.remaining()
        headers = {
            # Replicate aborts (unbilled) a prediction that has not started by our deadline.
            "Cancel-After": f"{max(1, int(remaining))}s",
        }
        wait = min(_MAX_WAIT, int(remaining - _WAIT_MARGIN))
        if wait >= 1:
            # Without time for a whole second of waiting, answer at once and poll instead: a
            # create held past our deadline would leave a billable prediction we cannot cancel.
            headers["Prefer"] = f"wait={wait}"
        if request.model == SDXL:
            path, body = "/v1/predictions", {"version": self._settings.sdxl_version, "input": inp}
        else:
            path, body = f"/v1/models/{request.model}/predictions", {"input": inp}
        try:
            resp = await send(
                self._client, "POST", path, deadline=deadline, json=body, headers=headers
            )
        except ProviderError as err:
            if err.extra.get("request_sent") != "false":
                err.billable = True
                err.message += " (create not retried: it may have been accepted)"
                err.args = (err.message,)
            raise
        if resp.status_code >= 300:
            raise self._error(resp, "create")
        return json_object(resp, billable=True)

    def _usable(self, pred: dict[str, Any], wanted: int) -> bool:
        if pred.get("status") in _TERMINAL:
            return True
        # Replicate answers as soon as all files exist, even before "succeeded" (contracts 3.2).
        return len(_as_list(pred.get("output"))) >= wanted

    async def _wait(
        self,
        pred: dict[str, Any],
        request: GenerationRequest,
        deadline: Deadline,
        progress: ProgressSink | None,
    ) -> dict[str, Any]:
        job_id = str(pred.get("id") or "")
        urls = pred.get("urls") if isinstance(pred.get("urls"), dict) else {}
        assert isinstance(urls, dict)
        get_url = self._job_url(urls.get("get"), job_id, hosts=self._settings.api_hosts)
        cancel_url = self._job_url(urls.get("cancel"), job_id, hosts=self._settings.api_hosts)
        state = {"status": str(pred.get("status", ""))}

        async def step(d: Deadline) -> dict[str, Any] | Pending:
            r = await poll_get(self._client, get_url, deadline=d, job_id=job_id)
            if isinstance(r, Pending):
                return r
            if r.status_code >= 300:
                raise self._error(r, "poll", job_id=job_id, billable=True)
            current = json_object(r, billable=True, job_id=job_id)
            if self._usable(current, request.num_images):
                return current
            status = str(current.get("status", ""))
            if progress is not None and status != state["status"]:
                await progress(Progress(state=status, provider_job_id=job_id))
            state["status"] = status
            return Pending()

        return await poll_until(
            deadline,
            self._settings.poll_interval_seconds,
            step,
            on_timeout=cancel_at_deadline(
                self._client, "POST", cancel_url, what="replicate prediction", job_id=job_id
            ),
            what="replicate prediction",
            job_id=job_id,
            max_interval=self._settings.max_poll_interval_seconds,
            background=self._background,
        )

    def _outputs(self, pred: dict[str, Any], wanted: int, job_id: str) -> list[str]:
        status = str(pred.get("status", ""))
        error = " ".join(str(pred.get("error") or "").split())[:300]
        if status == "failed":
            reason = (
                reasons.PROVIDER_CONTENT_MODERATED
                if _NSFW.search(error)
                else reasons.PROVIDER_UNAVAILABLE
            )
            raise ProviderError(
                reason, f"prediction failed: {error}", billable=True, provider_job_id=job_id
            )
        if status == "aborted":
            raise ProviderError(
                reasons.PROVIDER_TIMEOUT,
                "prediction aborted: it had not started by Cancel-After",
                provider_job_id=job_id,
            )
        if status == "canceled":
            raise ProviderError(
                reasons.PROVIDER_UNAVAILABLE,
                "prediction was canceled on Replicate",
                billable=True,
                provider_job_id=job_id,
            )
        outputs = _as_list(pred.get("output"))
        if not all(isinstance(o, str) for o in outputs):
            raise bad_answer("output is not a list of URLs", job_id)
        if pred.get("data_removed"):
            raise bad_answer("result URL expired: prediction data was removed", job_id)
        if 0 < len(outputs) < wanted and status == "succeeded":
            # cog-flux drops images its safety checker flags and returns the rest.
            raise ProviderError(
                reasons.PROVIDER_CONTENT_MODERATED,
                f"{wanted - len(outputs)} of {wanted} images withheld by the safety checker",
                billable=True,
                provider_job_id=job_id,
            )
        if not outputs:
            raise bad_answer(f"prediction {status} without output", job_id)
        return [str(o) for o in outputs[:wanted]]

    def _error(
        self, resp: httpx.Response, stage: str, *, job_id: str = "", billable: bool = False
    ) -> ProviderError:
        err = error_from_status(resp, message=f"{stage} failed", billable=billable, job_id=job_id)
        if resp.status_code == 429 and err.retry_after_seconds is None:
            m = _THROTTLE.search(err.message)
            if m:
                err.retry_after_seconds = float(m.group(1))
        return err


def _as_list(output: object) -> list[Any]:
    if output is None or output == "":
        return []
    return output if isinstance(output, list) else [output]
