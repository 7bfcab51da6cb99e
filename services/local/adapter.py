"""The local Adapter: no network, no key, no cost; always enabled."""

from __future__ import annotations

import asyncio

from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    PriceUnit,
    Progress,
    ProgressSink,
    SizeRule,
)
from services.local.config import LocalSettings
from services.local.render import derive_seed, redraw, render

MODEL_ID = "imagegate-local-v1"
# How far an image-to-image result moves from its input when the caller sets no strength.
DEFAULT_STRENGTH = 0.6
# Renders bigger than this run in a worker thread so the event loop keeps serving.
_INLINE_PIXELS = 256 * 256


class LocalAdapter(Adapter):
    """Renders procedural images with Pillow."""

    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        self._settings = settings

    @property
    def enabled(self) -> bool:
        return True

    @property
    def max_concurrency(self) -> int:
        return self._settings.max_concurrency

    @property
    def default_timeout(self) -> float:
        return 60.0

    def models(self) -> list[ModelSpec]:
        return [
            ModelSpec(
                id=MODEL_ID,
                sizes=SizeRule(min_side=16, max_side=4096, multiple=1, max_pixels=16_777_216),
                max_images=4,
                seed=True,
                negative_prompt=True,
                steps=True,
                guidance=True,
                price_unit=PriceUnit.FREE,
                # Pillow blends (services/local/render.py `redraw`): image-to-image with a
                # strength, and inpainting that keeps every unmasked pixel.
                image_to_image=True,
                inpainting=True,
                strength=True,
            )
        ]

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if progress is not None:
            await progress(
                Progress(state="rendering", fraction=0.0, provider_job_id=request.request_id)
            )
        if self._settings.latency_ms > 0:
            await asyncio.sleep(self._settings.latency_ms / 1000)
        images = []
        detail = max(4, min(64, (request.steps or 24)))
        for index in range(request.num_images):
            seed = derive_seed(request.prompt, request.negative_prompt, request.seed, index)
            args = (
                request.prompt,
                request.width,
                request.height,
                seed,
                request.output_format,
                detail,
            )
            if request.width * request.height > _INLINE_PIXELS or request.image:
                data = await asyncio.to_thread(render, *args)
            else:
                data = render(*args)
            if request.image:
                strength = request.strength if request.strength is not None else DEFAULT_STRENGTH
                data = await asyncio.to_thread(
                    redraw,
                    request.image,
                    data,
                    request.width,
                    request.height,
                    strength,
                    request.output_format,
                    request.mask,
                )
            images.append(
                GeneratedImage(
                    data=data,
                    format=request.output_format,
                    width=request.width,
                    height=request.height,
                    seed=request.seed if request.seed is not None else seed,
                )
            )
            if progress is not None:
                await progress(
                    Progress(state="rendering", fraction=(index + 1) / request.num_images)
                )
        return GenerationResult(images=images, provider_job_id=f"local-{request.request_id}")
