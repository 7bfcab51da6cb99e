"""The BFL Adapter: one task per image, polled at its polling_url, sample fetched at once."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.inputs.encoding import b64
from imagegate.inputs.masks import resized
from imagegate.providerkit.download import download_images
from imagegate.providerkit.errors import BilledUsage, ProviderError, bad_answer
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import (
    Pending,
    error_from_status,
    json_object,
    poll_until,
    retry_after_from_headers,
    send,
)
from imagegate.providerkit.jobs import poll_get
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
from services.bfl.config import BflSettings

# Width and height: multiples of 32 within 256..1440 (BFL OpenAPI, contracts 4.2).
_SIZES = SizeRule(min_side=256, max_side=1440, multiple=32)
_FORMATS = (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP)
# Kontext takes an aspect ratio, not a size, and answers about one megapixel in it: these are its
# sizes (diffusers' FLUX Kontext preferred resolutions; the hosted table is [U], docs/edits.md).
KONTEXT_SIZES: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip
KONTEXT_MODELS = ("flux-kontext-pro", "flux-kontext-max")
FILL_MODEL = "flux-pro-1.0-fill"
# Input images: at most 20 MB (and 20 megapixels) each ([S] docs.bfl.ai).
MAX_INPUT_BYTES = 20 * 1024 * 1024
# Kontext: input_image plus the experimental input_image_2..4.
_KONTEXT_INPUTS = ("input_image", "input_image_2", "input_image_3", "input_image_4")
MODELS = (
    ModelSpec(id="flux-dev", sizes=_SIZES, formats=_FORMATS, price_unit=PriceUnit.IMAGE),
    ModelSpec(
        id="flux-pro-1.1",
        sizes=_SIZES,
        steps=False,
        guidance=False,
        formats=_FORMATS,
        price_unit=PriceUnit.IMAGE,
    ),
    *(
        ModelSpec(
            id=model,
            sizes=SizeRule(min_side=672, max_side=1568, fixed=KONTEXT_SIZES),
            steps=False,
            guidance=False,
            formats=_FORMATS,
            price_unit=PriceUnit.IMAGE,
            max_reference_images=len(_KONTEXT_INPUTS),
            max_input_image_bytes=MAX_INPUT_BYTES,
        )
        for model in KONTEXT_MODELS
    ),
    # Fill answers at its input's size: the adapter resizes image and mask to the asked size.
    ModelSpec(
        id=FILL_MODEL,
        sizes=SizeRule(min_side=256, max_side=2048, multiple=1),
        formats=_FORMATS,
        price_unit=PriceUnit.IMAGE,
        inpainting=True,
        input_image_required=True,
        max_input_image_bytes=MAX_INPUT_BYTES,
    ),
)
STEPS = {"flux-dev": (1, 50), FILL_MODEL: (15, 50)}
GUIDANCE = {"flux-dev": (1.5, 5.0), FILL_MODEL: (1.5, 100.0)}
# Moderation outcomes are final and not charged (BFL errors page).
_MODERATED = ("Request Moderated", "Content Moderated")


class BflAdapter(HostedAdapter[BflSettings]):
    """Black Forest Labs, `x-key: <BFL_API_KEY>`; one task per image (BFL makes one each)."""

    name = "bfl"

    def __init__(self, settings: BflSettings, *, telemetry: Telemetry | None = None) -> None:
        super().__init__(
            settings,
            headers={"x-key": settings.key_value()},
            max_connections=settings.max_active_tasks * 2,
            telemetry=telemetry,
        )
        self._active_tasks = 0

    @property
    def max_concurrency(self) -> int:
        return min(self._settings.max_concurrency, self._settings.max_active_tasks)

    @property
    def active_tasks(self) -> int:
        """BFL tasks this adapter has in flight."""
        return self._active_tasks

    def models(self) -> list[ModelSpec]:
        return list(MODELS)

    def build_input(self, request: GenerationRequest) -> tuple[dict[str, Any], list[Deviation]]:
        """The submit body for a validated request, and parameters clamped under degradation."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            # BFL encodes jpeg or png; webp is converted from lossless png.
            "output_format": "jpeg" if request.output_format is OutputFormat.JPEG else "png",
            "safety_tolerance": 2,
            "prompt_upsampling": False,
        }
        if request.model in KONTEXT_MODELS:
            w, h = request.width, request.height
            g = math.gcd(w, h)
            body["aspect_ratio"] = f"{w // g}:{h // g}"
            for name, data in zip(_KONTEXT_INPUTS, request.reference_images, strict=False):
                body[name] = b64(data)
        elif request.model == FILL_MODEL:
            size = (request.width, request.height)
            body["image"] = b64(resized(request.image, size))
            if request.mask:
                body["mask"] = b64(resized(request.mask, size))
        else:
            body["width"], body["height"] = request.width, request.height
        steps, scale, deviations = steps_and_guidance(request, STEPS, GUIDANCE)
        if steps is not None:
            body["steps"] = steps
        if scale is not None:
            body["guidance"] = scale
        return body, deviations

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if request.image or request.reference_images:
            # Input images may be resized and re-encoded: off the event loop.
            body, deviations = await asyncio.to_thread(self.build_input, request)
        else:
            body, deviations = self.build_input(request)
        n = request.num_images
        limit = self._settings.max_active_tasks
        if self._active_tasks + n > limit:
            # Over BFL's active-task limit the account gets 429s; refuse before it does.
            raise ProviderError(
                reasons.PROVIDER_CONCURRENCY_LIMITED,
                f"{self._active_tasks} BFL tasks active, {n} more would exceed {limit}",
                retry_after_seconds=1.0,
            )
        self._active_tasks += n
        try:
            return await self._run_tasks(request, body, deviations, deadline, progress)
        finally:
            self._active_tasks -= n

    async def _run_tasks(
        self,
        request: GenerationRequest,
        body: dict[str, Any],
        deviations: list[Deviation],
        deadline: Deadline,
        progress: ProgressSink | None,
    ) -> GenerationResult:
        """Submits every task first, then polls them; a failure reports what BFL bills.

        BFL bills each submitted task except a moderated one and has no cancel endpoint, so a
        sibling of a failed task is billed although its image is never fetched. Submitting all
        tasks before polling any keeps that count exact: no submit is left in flight.
        """
        n = request.num_images
        bodies = [
            {**body, "seed": request.seed + i} if request.seed is not None else body
            for i in range(n)
        ]
        submits = await asyncio.gather(
            *(self._submit(request, b, deadline) for b in bodies), return_exceptions=True
        )
        submitted = [s for s in submits if isinstance(s, tuple)]
        moderated: set[str] = set()
        failure = next((s for s in submits if isinstance(s, BaseException)), None)
        if failure is None:
            # Every task is awaited, failed or not, so each moderated one is known (not billed).
            outcomes = await asyncio.gather(
                *(
                    self._finish(request, b, job, url, deadline, progress)
                    for b, (job, url) in zip(bodies, submitted, strict=True)
                ),
                return_exceptions=True,
            )
            done = [o for o in outcomes if isinstance(o, tuple)]
            if len(done) == n:
                return GenerationResult(
                    images=[img for img, _, _ in done],
                    provider_job_id=",".join(job for _, job, _ in done),
                    provider_seconds=sum(seconds for _, _, seconds in done),
                    deviations=deviations,
                    model=request.model,
                )
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            for e in errors:
                if not isinstance(e, Exception):
                    raise e  # cancellation
            moderated = {
                e.provider_job_id
                for e in errors
                if isinstance(e, ProviderError) and e.reason == reasons.PROVIDER_CONTENT_MODERATED
            }
            # The most telling failure: anything but a moderation, else the moderation.
            failure = next(
                (
                    e
                    for e in errors
                    if getattr(e, "reason", "") != reasons.PROVIDER_CONTENT_MODERATED
                ),
                errors[0],
            )
        if isinstance(failure, ProviderError):
            billed = [job for job, _ in submitted if job not in moderated]
            failure.billed = BilledUsage(
                images=len(billed),
                megapixels=len(billed) * request.width * request.height / 1_000_000,
            )
            if submitted and not failure.provider_job_id:
                failure.provider_job_id = ",".join(job for job, _ in submitted)
        raise failure

    async def _submit(
        self, request: GenerationRequest, body: dict[str, Any], deadline: Deadline
    ) -> tuple[str, str]:
        """Submits one task: (task id, polling URL)."""
        resp = await send(
            self._client, "POST", f"/v1/{request.model}", deadline=deadline, json=body
        )
        if resp.status_code >= 300:
            raise self._error(resp, "submit")
        submitted = json_object(resp, billable=True)
        job_id = str(submitted.get("id") or "")
        polling_url = submitted.get("polling_url") or (
            f"{self._settings.effective_base_url}/v1/get_result?id={job_id}"
        )
        return job_id, self._job_url(polling_url, job_id, hosts=self._settings.hosts)

    async def _finish(
        self,
        request: GenerationRequest,
        body: dict[str, Any],
        job_id: str,
        polling_url: str,
        deadline: Deadline,
        progress: ProgressSink | None,
    ) -> tuple[GeneratedImage, str, float]:
        if progress is not None:
            await progress(Progress(state="Pending", fraction=0.0, provider_job_id=job_id))

        async def step(d: Deadline) -> dict[str, Any] | Pending:
            r = await poll_get(self._client, polling_url, deadline=d, job_id=job_id)
            if isinstance(r, Pending):
                return r
            if r.status_code >= 300:
                raise self._error(r, "poll", job_id=job_id, billable=True)
            status = json_object(r, billable=True, job_id=job_id)
            state = str(status.get("status", ""))
            if state == "Pending":
                fraction = status.get("progress")
                if progress is not None:
                    await progress(
                        Progress(
                            state=state,
                            fraction=float(fraction) if isinstance(fraction, int | float) else -1,
                            provider_job_id=job_id,
                        )
                    )
                after = retry_after_from_headers(r.headers)
                return Pending(
                    after=min(after, self._settings.max_poll_interval_seconds)
                    if after is not None
                    else None
                )
            return status

        # BFL documents no cancel endpoint: a task still running at the deadline runs on.
        final = await poll_until(
            deadline,
            self._settings.poll_interval_seconds,
            step,
            what="BFL task",
            job_id=job_id,
            max_interval=self._settings.max_poll_interval_seconds,
        )
        sample, seconds = self._sample(final, job_id)
        [image] = await download_images(
            self._client,
            [sample],
            self._results_from(self._settings.hosts),
            deadline=deadline,
            wanted=request.output_format,
            first_seed=_seed(final, body),
            job_id=job_id,
        )
        return image, job_id, seconds

    def _sample(self, status: dict[str, Any], job_id: str) -> tuple[str, float]:
        state = str(status.get("status", ""))
        details = " ".join(str(status.get("details") or "").split())[:300]
        if state in _MODERATED:
            raise ProviderError(
                reasons.PROVIDER_CONTENT_MODERATED,
                f"{state}" + (f": {details}" if details else ""),
                provider_job_id=job_id,
                extra={"provider_status": state},
            )
        if state == "Task not found":
            raise ProviderError(
                reasons.PROVIDER_BAD_RESPONSE,
                "task not found: unknown or expired id",
                billable=True,
                provider_job_id=job_id,
                extra={"provider_status": state},
            )
        if state == "Error":
            raise ProviderError(
                reasons.PROVIDER_UNAVAILABLE,
                "task failed" + (f": {details}" if details else ""),
                billable=True,
                provider_job_id=job_id,
                extra={"provider_status": state},
            )
        if state != "Ready":
            raise bad_answer(f"unknown task status {state[:40]!r}", job_id)
        result = status.get("result")
        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise bad_answer("Ready without result.sample", job_id)
        assert isinstance(result, dict)
        duration = result.get("duration")
        if not isinstance(duration, int | float):
            start, end = result.get("start_time"), result.get("end_time")
            ok = isinstance(start, int | float) and isinstance(end, int | float)
            duration = float(end) - float(start) if ok else 0.0  # type: ignore[arg-type]
        return sample, float(duration)

    def _error(
        self, resp: httpx.Response, stage: str, *, job_id: str = "", billable: bool = False
    ) -> ProviderError:
        return error_from_status(resp, message=f"{stage} failed", billable=billable, job_id=job_id)


def _seed(status: dict[str, Any], body: dict[str, Any]) -> int | None:
    result = status.get("result")
    seed = result.get("seed") if isinstance(result, dict) else None
    if isinstance(seed, int):
        return seed
    sent = body.get("seed")
    return sent if isinstance(sent, int) else None
