"""The fal Adapter: submit to queue.fal.run, poll status_url, fetch response_url, cancel late jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.inputs.encoding import data_uri
from imagegate.inputs.masks import resized
from imagegate.providerkit.download import download_images
from imagegate.providerkit.errors import BilledUsage, ProviderError, bad_answer
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import (
    Pending,
    error_detail,
    error_from_status,
    json_object,
    poll_until,
    send,
)
from imagegate.providerkit.jobs import cancel_at_deadline, poll_get
from imagegate.providerkit.kontext import KONTEXT_RATIOS
from imagegate.providerkit.params import steps_and_guidance
from imagegate.providerkit.types import (
    Deviation,
    GeneratedImage,
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
from services.fal.config import FalSettings

# fal's custom sizes are not documented beyond the presets (contracts 2.4, [U]); FLUX works in
# 16-pixel latents, so sizes are whole multiples of 16 up to 2048 per side.
_FLUX_SIZES = SizeRule(min_side=256, max_side=2048, multiple=16, max_pixels=2048 * 2048)
_SDXL_SIZES = SizeRule(min_side=256, max_side=2048, multiple=8, max_pixels=2048 * 2048)
_NATIVE = (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP)
_TEXT_MODELS = (
    ModelSpec(
        id="fal-ai/flux/schnell",
        sizes=_FLUX_SIZES,
        negative_prompt=False,
        formats=_NATIVE,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    ModelSpec(
        id="fal-ai/flux/dev",
        sizes=_FLUX_SIZES,
        negative_prompt=False,
        formats=_NATIVE,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    ModelSpec(
        id="fal-ai/flux-pro/v1.1",
        sizes=_FLUX_SIZES,
        negative_prompt=False,
        steps=False,
        guidance=False,
        formats=_NATIVE,
        price_unit=PriceUnit.MEGAPIXEL,
    ),
    ModelSpec(
        id="fal-ai/fast-sdxl",
        sizes=_SDXL_SIZES,
        negative_prompt=True,
        formats=_NATIVE,
        price_unit=PriceUnit.IMAGE,
    ),
)
I2I = "fal-ai/flux/dev/image-to-image"
KONTEXT = "fal-ai/flux-pro/kontext"
FILL = "fal-ai/flux-pro/v1/fill"
MODELS: tuple[ModelSpec, ...] = (
    *_TEXT_MODELS,
    # Image-to-image and fill answer at their input's size: the adapter resizes the input (and
    # mask) to the asked size first.
    ModelSpec(
        id=I2I,
        sizes=_FLUX_SIZES,
        negative_prompt=False,
        formats=_NATIVE,
        price_unit=PriceUnit.MEGAPIXEL,
        image_to_image=True,
        strength=True,
        input_image_required=True,
    ),
    ModelSpec(
        id=KONTEXT,
        sizes=SizeRule(min_side=672, max_side=1568, fixed=tuple(KONTEXT_RATIOS)),
        negative_prompt=False,
        steps=False,
        formats=_NATIVE,
        price_unit=PriceUnit.IMAGE,
        # One image on /kontext, several on /kontext/multi; text-only is another endpoint.
        max_reference_images=4,
        input_image_required=True,
    ),
    ModelSpec(
        id=FILL,
        sizes=_FLUX_SIZES,
        negative_prompt=False,
        steps=False,
        guidance=False,
        formats=_NATIVE,
        price_unit=PriceUnit.MEGAPIXEL,
        inpainting=True,
        input_image_required=True,
    ),
)
# Inclusive step and guidance ranges per model (fal model API pages, contracts 2.4).
STEPS = {
    "fal-ai/flux/schnell": (1, 12),
    "fal-ai/flux/dev": (1, 50),
    "fal-ai/fast-sdxl": (1, 50),
    I2I: (1, 50),
}
GUIDANCE = {
    I2I: (1.0, 20.0),
    KONTEXT: (1.0, 20.0),
    "fal-ai/flux/schnell": (1.0, 20.0),
    "fal-ai/flux/dev": (1.0, 20.0),
    "fal-ai/fast-sdxl": (0.0, 20.0),
}
# fal error_type values (flat error bodies and COMPLETED statuses) and what they mean for us.
_ERROR_TYPES = {
    "content_policy_violation": reasons.PROVIDER_CONTENT_MODERATED,
    "request_timeout": reasons.PROVIDER_TIMEOUT,
    "startup_timeout": reasons.PROVIDER_UNAVAILABLE,
    "runner_scheduling_failure": reasons.PROVIDER_UNAVAILABLE,
    "runner_connection_timeout": reasons.PROVIDER_UNAVAILABLE,
    "runner_disconnected": reasons.PROVIDER_UNAVAILABLE,
    "runner_connection_refused": reasons.PROVIDER_UNAVAILABLE,
    "runner_server_error": reasons.PROVIDER_UNAVAILABLE,
    "internal_error": reasons.PROVIDER_UNAVAILABLE,
}


class FalAdapter(HostedAdapter[FalSettings]):
    """fal.ai through its queue API, `Authorization: Key <FAL_KEY>`."""

    name = "fal"

    def __init__(self, settings: FalSettings, *, telemetry: Telemetry | None = None) -> None:
        super().__init__(
            settings,
            headers={"authorization": f"Key {settings.key_value()}"},
            max_connections=settings.max_concurrency * 2,
            telemetry=telemetry,
        )

    def models(self) -> list[ModelSpec]:
        return list(MODELS)

    def build_input(self, request: GenerationRequest) -> tuple[dict[str, Any], list[Deviation]]:
        """The fal input for a validated request, and parameters clamped under degradation."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "num_images": request.num_images,
            # fal encodes jpeg or png; webp is converted from lossless png.
            "output_format": "jpeg" if request.output_format is OutputFormat.JPEG else "png",
            "enable_safety_checker": True,
            "sync_mode": False,
        }
        size = (request.width, request.height)
        if request.model == KONTEXT:
            body["aspect_ratio"] = KONTEXT_RATIOS[size]
            refs = [data_uri(d) for d in request.reference_images]
            if len(refs) > 1:
                body["image_urls"] = refs
            elif refs:
                body["image_url"] = refs[0]
        elif request.model in (I2I, FILL):
            # Inline data URIs: the gateway never hands a provider a caller's URL.
            body["image_url"] = data_uri(resized(request.image, size))
            if request.mask:
                body["mask_url"] = data_uri(resized(request.mask, size))
            if request.strength is not None:
                body["strength"] = request.strength
        else:
            body["image_size"] = {"width": request.width, "height": request.height}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        steps, scale, deviations = steps_and_guidance(request, STEPS, GUIDANCE)
        if steps is not None:
            body["num_inference_steps"] = steps
        if scale is not None:
            body["guidance_scale"] = scale
        return body, deviations

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if request.image or request.reference_images:
            # Input images may be resized and re-encoded: off the event loop.
            body, deviations = await asyncio.to_thread(self.build_input, request)
        else:
            body, deviations = self.build_input(request)
        headers = {}
        if deadline.remaining() > 2:
            # Ask fal not to start the job once we could no longer use it (not billed then).
            headers["X-Fal-Request-Timeout"] = str(int(deadline.remaining()))
        endpoint = f"{KONTEXT}/multi" if "image_urls" in body else request.model
        resp = await send(
            self._client, "POST", f"/{endpoint}", deadline=deadline, json=body, headers=headers
        )
        if resp.status_code >= 300:
            raise self._error(resp, "submit")
        job = json_object(resp, billable=True, job_id=resp.headers.get("x-fal-request-id", ""))
        job_id = str(job.get("request_id") or resp.headers.get("x-fal-request-id") or "")
        urls = {
            k: self._job_url(job.get(k), job_id, hosts=self._settings.api_hosts)
            for k in ("status_url", "response_url", "cancel_url")
        }
        if progress is not None:
            await progress(
                Progress(
                    state=str(job.get("status") or "IN_QUEUE"),
                    queue_position=_int(job.get("queue_position"), -1),
                    provider_job_id=job_id,
                )
            )
        last: dict[str, Any] = {}

        async def step(d: Deadline) -> dict[str, Any] | Pending:
            r = await poll_get(self._client, urls["status_url"], deadline=d, job_id=job_id)
            if isinstance(r, Pending):
                return r
            if r.status_code not in (200, 202):
                raise self._error(r, "status", job_id=job_id)
            status = json_object(r, billable=True, job_id=job_id)
            state = str(status.get("status", ""))
            last["state"] = state
            if state == "COMPLETED":
                return status
            if state not in ("IN_QUEUE", "IN_PROGRESS"):
                raise bad_answer(
                    f"status {state!r} is not IN_QUEUE, IN_PROGRESS or COMPLETED", job_id
                )
            if progress is not None:
                await progress(
                    Progress(
                        state=state,
                        queue_position=_int(status.get("queue_position"), -1),
                        provider_job_id=job_id,
                    )
                )
            return Pending()

        status = await poll_until(
            deadline,
            self._settings.poll_interval_seconds,
            step,
            on_timeout=cancel_at_deadline(
                self._client, "PUT", urls["cancel_url"], what="fal job", job_id=job_id
            ),
            what="fal request",
            job_id=job_id,
            max_interval=self._settings.max_poll_interval_seconds,
            background=self._background,
        )
        try:
            result_resp = await send(self._client, "GET", urls["response_url"], deadline=deadline)
            if result_resp.status_code >= 300:
                raise self._error(result_resp, "result", job_id=job_id, billable=True)
            if status.get("error"):
                raise self._completed_error(status, job_id)
            result = json_object(result_resp, billable=True, job_id=job_id)
            images = await self._images(result, request, deadline, job_id)
        except ProviderError as err:
            if err.billable and err.billed is None:
                # fal charges a completed request by its output, used or not.
                n = request.num_images
                err.billed = BilledUsage(
                    images=n, megapixels=n * request.width * request.height / 1_000_000
                )
            raise
        metrics = status.get("metrics")
        timings = result.get("timings")
        seconds = _float(metrics.get("inference_time") if isinstance(metrics, dict) else None)
        seconds = seconds or _float(timings.get("inference") if isinstance(timings, dict) else None)
        return GenerationResult(
            images=images,
            provider_job_id=job_id,
            provider_seconds=seconds,
            deviations=deviations,
            model=request.model,
        )

    async def _images(
        self, result: dict[str, Any], request: GenerationRequest, deadline: Deadline, job_id: str
    ) -> list[GeneratedImage]:
        items = result.get("images")
        if not isinstance(items, list) or not items:
            raise bad_answer("result has no images", job_id)
        nsfw = result.get("has_nsfw_concepts")
        if isinstance(nsfw, list) and any(nsfw):
            # With the safety checker on, flagged images come back blacked out.
            raise ProviderError(
                reasons.PROVIDER_CONTENT_MODERATED,
                f"{sum(map(bool, nsfw))} of {len(nsfw)} images flagged by fal's safety checker",
                billable=True,
                provider_job_id=job_id,
            )
        seed = result.get("seed") if isinstance(result.get("seed"), int) else None
        urls = [i.get("url") if isinstance(i, dict) else None for i in items]
        if not all(isinstance(u, str) for u in urls):
            raise bad_answer("result image without a url", job_id)
        return await download_images(
            self._client,
            [str(url) for url in urls],
            self._results_from(self._settings.result_hosts),
            deadline=deadline,
            wanted=request.output_format,
            first_seed=seed,
            job_id=job_id,
        )

    def _error(
        self, resp: httpx.Response, stage: str, *, job_id: str = "", billable: bool = False
    ) -> ProviderError:
        """fal-specific cases first, then the generic table."""
        job_id = job_id or resp.headers.get("x-fal-request-id", "")
        message = f"{stage} failed"
        body = _maybe_json(resp)
        detail = body.get("detail") if isinstance(body, dict) else None
        types = (
            [d.get("type") for d in detail if isinstance(d, dict)]
            if isinstance(detail, list)
            else []
        )
        error_type = (
            body.get("error_type") if isinstance(body, dict) else None
        ) or resp.headers.get("x-fal-error-type")
        if "content_policy_violation" in types or error_type == "content_policy_violation":
            return error_from_status(
                resp,
                message=f"{message}: content policy violation",
                reason=reasons.PROVIDER_CONTENT_MODERATED,
                billable=billable,
                job_id=job_id,
            )
        if resp.status_code == 403 and "locked" in error_detail(resp).lower():
            return error_from_status(
                resp,
                message=f"{message}: account locked",
                reason=reasons.PROVIDER_OUT_OF_CREDITS,
                billable=False,
                job_id=job_id,
            )
        if isinstance(error_type, str) and error_type in _ERROR_TYPES:
            return error_from_status(
                resp,
                message=f"{message} ({error_type})",
                reason=_ERROR_TYPES[error_type],
                billable=billable,
                job_id=job_id,
            )
        return error_from_status(resp, message=message, billable=billable, job_id=job_id)

    def _completed_error(self, status: dict[str, Any], job_id: str) -> ProviderError:
        error_type = str(status.get("error_type") or "")
        reason = _ERROR_TYPES.get(error_type, reasons.PROVIDER_BAD_RESPONSE)
        text = " ".join(str(status.get("error"))[:300].split())
        return ProviderError(
            reason,
            f"request completed with an error ({error_type or 'unknown'}): {text}",
            billable=True,
            provider_job_id=job_id,
        )


def _maybe_json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
