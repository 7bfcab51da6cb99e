"""The diffusers Adapter: a self-hosted pipeline behind the same ProviderService contract."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.images import encode
from imagegate.providerkit.params import steps_and_guidance
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    Progress,
    ProgressSink,
)
from services.diffusers.call import Call
from services.diffusers.config import DiffusersSettings
from services.diffusers.profiles import PROFILES, Profile
from services.diffusers.worker import Cancelled, DeviceWorker, Job, QueueFull, WaitTooLong

if TYPE_CHECKING:
    from PIL import Image

    from services.diffusers.pipeline import LoadedPipeline

log = logging.getLogger(__name__)

# Seeds are drawn below 2**63 so they survive every signed 64-bit hop (proto, JSON, torch).
_SEED_BITS = 63


class DiffusersAdapter(Adapter):
    """Runs one local diffusers pipeline; requests beyond the device's wait list are refused."""

    name = "diffusers"

    def __init__(self, settings: DiffusersSettings) -> None:
        if settings.model_id not in PROFILES:
            raise ValueError(
                f"IMAGEGATE_DIFFUSERS_MODEL_ID={settings.model_id!r} is not one of "
                f"{', '.join(PROFILES)}"
            )
        self._settings = settings
        self._profile: Profile = PROFILES[settings.model_id]
        self._worker = DeviceWorker(settings.max_queue)
        self._pipeline: LoadedPipeline | None = None
        self._jobs = 0
        # Progress deliveries scheduled from the device thread (kept so none is collected early).
        self._reports: set[asyncio.Future[None]] = set()

    def load(self) -> None:
        """Loads the weights onto the device (blocking; called once before serving)."""
        if not self._settings.enabled or self._pipeline is not None:
            return
        # Imported here so the catalog and tests can describe the adapter without the extra.
        from services.diffusers.pipeline import LoadedPipeline

        assert self._settings.model_path is not None
        self._pipeline = LoadedPipeline(
            self._settings.model_path, device=self._settings.device, dtype=self._settings.dtype
        )
        log.info(
            "diffusers pipeline loaded",
            extra={
                "provider_model": self._profile.spec.id,
                "pipeline": self._pipeline.pipeline_class,
                "device": self._pipeline.device,
                "dtype": str(self._pipeline.dtype),
            },
        )

    @property
    def worker(self) -> DeviceWorker:
        """The device's worker (its counters are what tests and gauges read)."""
        return self._worker

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    @property
    def base_url(self) -> str:
        device = self._pipeline.device if self._pipeline is not None else self._settings.device
        return f"local://{device}"

    @property
    def max_concurrency(self) -> int:
        return self._worker.capacity

    @property
    def default_timeout(self) -> float:
        return self._settings.timeout_seconds

    def models(self) -> list[ModelSpec]:
        return [self._profile.spec]

    def _limits(self) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[float, float]]]:
        lo, hi = self._profile.steps_range
        if self._settings.max_steps:
            hi = self._settings.max_steps
        model = self._profile.spec.id
        return {model: (lo, hi)}, {model: self._profile.guidance_range}

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if self._pipeline is None:
            raise ProviderError(reasons.PROVIDER_UNAVAILABLE, "pipeline not loaded")
        steps_limit, guidance_limit = self._limits()
        steps, guidance, deviations = steps_and_guidance(request, steps_limit, guidance_limit)
        first_seed = request.seed if request.seed is not None else secrets.randbits(_SEED_BITS)
        call = Call(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_images=request.num_images,
            seeds=tuple((first_seed + i) % (1 << _SEED_BITS) for i in range(request.num_images)),
            steps=steps if steps is not None else self._profile.default_steps,
            guidance_scale=guidance if guidance is not None else self._profile.default_guidance,
        )
        self._jobs += 1
        job_id = f"diffusers-{request.request_id or self._jobs}"
        job: Job[list[Image.Image]] = Job(
            deadline_at=deadline.at,
            steps=call.steps,
            units=call.steps * call.width * call.height * call.num_images / 1e6,
        )
        loop = asyncio.get_running_loop()

        def report(p: Progress) -> None:
            if progress is not None:
                task = asyncio.ensure_future(progress(p))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)

        def on_step(done: int, total: int) -> None:
            self._worker.step_done(job, done)
            loop.call_soon_threadsafe(
                report,
                Progress(state="DENOISING", fraction=done / total, provider_job_id=job_id),
            )
            job.check()

        def work(j: Job[list[Image.Image]]) -> list[Image.Image]:
            loop.call_soon_threadsafe(
                report, Progress(state="RUNNING", fraction=0.0, provider_job_id=job_id)
            )
            return self._run(call, on_step)

        if (
            progress is not None
            and self._worker.running + self._worker.waiting < self._worker.capacity
        ):
            await progress(
                Progress(
                    state="IN_QUEUE",
                    queue_position=self._worker.running + self._worker.waiting,
                    provider_job_id=job_id,
                )
            )
        try:
            pictures = await self._worker.submit(job, work)
        except QueueFull as err:
            raise ProviderError(
                reasons.PROVIDER_CONCURRENCY_LIMITED,
                f"{err}; try another provider",
                retry_after_seconds=self._settings.retry_after_seconds,
                extra={"queue_limit": str(err.limit)},
            ) from None
        except WaitTooLong as err:
            # Waiting here would end past the deadline: let the Router try elsewhere now.
            raise ProviderError(
                reasons.PROVIDER_CONCURRENCY_LIMITED,
                f"{err}; try another provider",
                retry_after_seconds=max(err.expected, self._settings.retry_after_seconds),
                extra={"expected_wait_seconds": f"{err.expected:.1f}"},
            ) from None
        except Cancelled:
            raise ProviderError(
                reasons.PROVIDER_TIMEOUT,
                f"deadline passed after {job.steps_done} of {call.steps} steps; stopped there",
                # Our own device's time: a stopped job is not charged to the caller.
                billable=False,
                provider_job_id=job_id,
            ) from None
        # Encoding a large PNG takes tens of milliseconds: off the event loop, off the device.
        encoded = await asyncio.to_thread(
            lambda: [encode(picture, request.output_format) for picture in pictures]
        )
        images = [
            GeneratedImage(
                data=encoded[i],
                format=request.output_format,
                width=picture.width,
                height=picture.height,
                seed=call.seeds[i],
            )
            for i, picture in enumerate(pictures)
        ]
        return GenerationResult(
            images=images,
            provider_job_id=job_id,
            provider_seconds=job.seconds,
            deviations=deviations,
            model=request.model,
        )

    def _run(self, call: Call, on_step: Callable[[int, int], None]) -> list[Image.Image]:
        assert self._pipeline is not None
        return self._pipeline.run(call, on_step)

    async def aclose(self) -> None:
        """Stops taking jobs; a running one stops at its deadline."""
        self._worker.close()
