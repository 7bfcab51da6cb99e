"""ProviderService servicer shared by every adapter: validation, limits, deadlines, usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument
from imagegate.inputs.checks import InputLimits
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.edits import edit_inputs, input_violations
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import (
    Deviation,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    OutputFormat,
    PriceUnit,
    Progress,
)

FORMAT_FROM_PROTO = {
    image_pb2.IMAGE_FORMAT_UNSPECIFIED: OutputFormat.PNG,
    image_pb2.IMAGE_FORMAT_PNG: OutputFormat.PNG,
    image_pb2.IMAGE_FORMAT_JPEG: OutputFormat.JPEG,
    image_pb2.IMAGE_FORMAT_WEBP: OutputFormat.WEBP,
}
FORMAT_TO_PROTO = {
    OutputFormat.PNG: image_pb2.IMAGE_FORMAT_PNG,
    OutputFormat.JPEG: image_pb2.IMAGE_FORMAT_JPEG,
    OutputFormat.WEBP: image_pb2.IMAGE_FORMAT_WEBP,
}
PRICE_UNIT_TO_PROTO = {
    PriceUnit.MEGAPIXEL: catalog_pb2.PRICE_UNIT_MEGAPIXEL,
    PriceUnit.IMAGE: catalog_pb2.PRICE_UNIT_IMAGE,
    PriceUnit.COMPUTE_SECOND: catalog_pb2.PRICE_UNIT_COMPUTE_SECOND,
    PriceUnit.TOKEN: catalog_pb2.PRICE_UNIT_TOKEN,
    PriceUnit.FREE: catalog_pb2.PRICE_UNIT_FREE,
}
# Time kept back from the caller's deadline so a timeout is reported before the caller gives up.
_REPORTING_MARGIN = 0.05


def capabilities_proto(spec: ModelSpec) -> catalog_pb2.Capabilities:
    """The proto form of a model's capabilities."""
    return catalog_pb2.Capabilities(
        min_side=spec.sizes.min_side,
        max_side=spec.sizes.max_side,
        side_multiple=spec.sizes.multiple,
        fixed_sizes=[catalog_pb2.Size(width=w, height=h) for w, h in spec.sizes.fixed],
        max_images=spec.max_images,
        seed=spec.seed,
        negative_prompt=spec.negative_prompt,
        formats=[FORMAT_TO_PROTO[f] for f in spec.formats],
        steps=spec.steps,
        guidance=spec.guidance,
        max_pixels=spec.sizes.max_pixels,
        image_to_image=spec.image_to_image,
        inpainting=spec.inpainting,
        max_reference_images=spec.max_reference_images,
        strength=spec.strength,
        input_image_required=spec.input_image_required,
        max_input_image_bytes=spec.max_input_image_bytes,
    )


def nearest_size(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """The accepted size closest to the asked one (same aspect ratio where possible)."""
    rule = spec.sizes
    if rule.fixed:
        ratio = width / height
        return min(
            rule.fixed,
            key=lambda s: (abs(s[0] / s[1] - ratio), abs(s[0] * s[1] - width * height)),
        )
    m = max(1, rule.multiple)

    def snap(v: float) -> int:
        return int(min(rule.max_side, max(rule.min_side, round(v / m) * m)))

    w, h = snap(width), snap(height)
    if rule.max_pixels and w * h > rule.max_pixels:
        scale = (rule.max_pixels / (w * h)) ** 0.5
        w, h = snap(w * scale), snap(h * scale)
        while w * h > rule.max_pixels:
            w, h = (w - m, h) if w >= h else (w, h - m)
    return w, h


def size_ok(spec: ModelSpec, width: int, height: int) -> bool:
    """Whether the model accepts this exact size."""
    rule = spec.sizes
    if rule.fixed:
        return (width, height) in rule.fixed
    if not (rule.min_side <= width <= rule.max_side and rule.min_side <= height <= rule.max_side):
        return False
    if width % rule.multiple or height % rule.multiple:
        return False
    return not (rule.max_pixels and width * height > rule.max_pixels)


class ProviderServicer(provider_pb2_grpc.ProviderServiceServicer):
    """Implements ProviderService around one Adapter."""

    def __init__(self, adapter: Adapter, limits: InputLimits | None = None) -> None:
        self._adapter = adapter
        self._specs = {m.id: m for m in adapter.models()}
        self._in_flight = 0
        self._limits = limits or InputLimits()

    @property
    def in_flight(self) -> int:
        """Generations running now."""
        return self._in_flight

    async def DescribeProvider(
        self, request: provider_pb2.DescribeProviderRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.DescribeProviderResponse:
        a = self._adapter
        return provider_pb2.DescribeProviderResponse(
            provider=a.name,
            enabled=a.enabled,
            max_concurrency=a.max_concurrency,
            base_url=a.base_url,
            models=[
                provider_pb2.ProviderModel(
                    id=m.id,
                    capabilities=capabilities_proto(m),
                    price_unit=PRICE_UNIT_TO_PROTO[m.price_unit],
                )
                for m in self._specs.values()
            ],
        )

    async def GenerateImage(
        self, request: provider_pb2.GenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.GenerateImageResponse:
        return await self._run(request, context, None)

    async def StreamGenerateImage(
        self, request: provider_pb2.StreamGenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[provider_pb2.StreamGenerateImageResponse]:
        queue: asyncio.Queue[Progress] = asyncio.Queue()

        async def sink(p: Progress) -> None:
            queue.put_nowait(p)

        task = asyncio.ensure_future(self._run(request.request, context, sink))
        getter: asyncio.Future[Progress] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    p = getter.result()
                    yield provider_pb2.StreamGenerateImageResponse(
                        progress=provider_pb2.Progress(
                            state=p.state,
                            queue_position=p.queue_position,
                            fraction=p.fraction,
                            provider_job_id=p.provider_job_id,
                        )
                    )
                    continue
                getter.cancel()
                while not queue.empty():
                    queue.get_nowait()
                yield provider_pb2.StreamGenerateImageResponse(result=task.result())
                return
        finally:
            # A caller's cancellation lands in asyncio.wait with the getter still pending; left
            # alone it is destroyed pending when the queue is collected.
            if getter is not None:
                getter.cancel()
            if not task.done():
                task.cancel()

    async def _run(
        self,
        request: provider_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        sink: object,
    ) -> provider_pb2.GenerateImageResponse:
        a = self._adapter
        if not a.enabled:
            raise ProviderError(
                reasons.PROVIDER_DISABLED, "adapter has no credentials configured"
            ).to_imagegate_error(a.name, request.model)
        gen, deviations = self._validate(request)
        if self._in_flight >= a.max_concurrency:
            raise ProviderError(
                reasons.PROVIDER_CONCURRENCY_LIMITED,
                f"{self._in_flight} generations in flight, limit {a.max_concurrency}",
                retry_after_seconds=1.0,
            ).to_imagegate_error(a.name, gen.model)
        deadline = Deadline.from_context(context, a.default_timeout)
        deadline = Deadline(deadline.at - _REPORTING_MARGIN)
        self._in_flight += 1
        started = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no extra task per call (and 3.11's wait_for can
            # swallow a cancellation).
            async with asyncio.timeout(max(0.001, deadline.remaining())):
                result = await a.generate(gen, deadline, sink)  # type: ignore[arg-type]
        except ProviderError as err:
            raise err.to_imagegate_error(a.name, gen.model) from None
        except TimeoutError:
            raise ProviderError(
                reasons.PROVIDER_TIMEOUT,
                f"no result within the deadline ({time.monotonic() - started:.2f}s)",
            ).to_imagegate_error(a.name, gen.model) from None
        finally:
            self._in_flight -= 1
        wall = time.monotonic() - started
        return self._response(gen, result, deviations, wall)

    def _validate(
        self, r: provider_pb2.GenerateImageRequest
    ) -> tuple[GenerationRequest, list[Deviation]]:
        violations: list[FieldViolation] = []
        deviations: list[Deviation] = []
        spec = self._specs.get(r.model)
        if spec is None:
            known = ", ".join(sorted(self._specs))
            raise ImagegateError(
                grpc.StatusCode.INVALID_ARGUMENT,
                reasons.UNKNOWN_MODEL,
                f"{self._adapter.name} does not serve model {r.model!r}; it serves: {known}",
                domain=f"imagegate.provider.{self._adapter.name}",
                metadata={"model": r.model},
                field_violations=[FieldViolation("model", f"unknown model; one of: {known}")],
            )
        if not r.prompt.strip():
            violations.append(FieldViolation("prompt", "must not be empty"))
        if not 1 <= r.num_images <= 4:
            violations.append(FieldViolation("num_images", "must be 1 to 4"))
        if not (16 <= r.width <= 8192 and 16 <= r.height <= 8192):
            violations.append(FieldViolation("width/height", "each side must be 16 to 8192"))
        violations += input_violations(r, self._limits)
        if violations:
            raise invalid_argument(violations, domain=f"imagegate.provider.{self._adapter.name}")
        try:
            image, mask, refs, strength, edit_unsupported = edit_inputs(spec, r)
        except ProviderError as err:
            raise err.to_imagegate_error(self._adapter.name, r.model) from None
        width, height, num = r.width, r.height, r.num_images
        fmt = FORMAT_FROM_PROTO.get(r.output_format, OutputFormat.PNG)
        unsupported: list[Deviation] = list(edit_unsupported)
        if not size_ok(spec, width, height):
            w2, h2 = nearest_size(spec, width, height)
            unsupported.append(
                Deviation("size", f"{width}x{height}", f"{w2}x{h2}", "size not accepted by model")
            )
            width, height = w2, h2
        if num > spec.max_images:
            unsupported.append(
                Deviation("num_images", str(num), str(spec.max_images), "model maximum")
            )
            num = spec.max_images
        seed = r.seed if r.HasField("seed") else None
        if seed is not None and not spec.seed:
            unsupported.append(Deviation("seed", str(seed), "", "model ignores seeds"))
            seed = None
        negative = r.negative_prompt
        if negative and not spec.negative_prompt:
            unsupported.append(Deviation("negative_prompt", negative, "", "not supported"))
            negative = ""
        steps = r.steps if r.HasField("steps") else None
        if steps is not None and not spec.steps:
            unsupported.append(Deviation("steps", str(steps), "", "not settable"))
            steps = None
        guidance = r.guidance_scale if r.HasField("guidance_scale") else None
        if guidance is not None and not spec.guidance:
            unsupported.append(Deviation("guidance_scale", f"{guidance:g}", "", "not settable"))
            guidance = None
        quality = r.quality
        if quality and quality not in spec.qualities:
            # No quality knob: nothing to honour and nothing priced by it, so never refused.
            deviations.append(Deviation("quality", quality, "", "model has no quality setting"))
            quality = ""
        if fmt not in spec.formats:
            unsupported.append(Deviation("output_format", fmt.value, "", "format unavailable"))
        if unsupported and not r.allow_degradation:
            raise ProviderError(
                reasons.PROVIDER_UNSUPPORTED_PARAMETER,
                "model cannot honour: "
                + "; ".join(f"{d.field}={d.requested} ({d.reason})" for d in unsupported),
                extra={"fields": ",".join(d.field for d in unsupported)},
            ).to_imagegate_error(self._adapter.name, r.model)
        deviations.extend(unsupported)
        gen = GenerationRequest(
            request_id=r.request_id,
            model=r.model,
            prompt=r.prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            num_images=num,
            seed=seed,
            output_format=fmt,
            steps=steps,
            guidance_scale=guidance,
            allow_degradation=r.allow_degradation,
            quality=quality,
            image=image,
            strength=strength,
            mask=mask,
            reference_images=refs,
        )
        return gen, deviations

    def _response(
        self,
        gen: GenerationRequest,
        result: GenerationResult,
        deviations: list[Deviation],
        wall: float,
    ) -> provider_pb2.GenerateImageResponse:
        if len(result.images) != gen.num_images:
            # Never report success without the requested images.
            raise ProviderError(
                reasons.PROVIDER_BAD_RESPONSE,
                f"provider returned {len(result.images)} images, {gen.num_images} requested",
                billable=True,
                provider_job_id=result.provider_job_id,
            ).to_imagegate_error(self._adapter.name, gen.model)
        images = [
            image_pb2.Image(
                data=img.data,
                mime_type=img.format.mime_type,
                width=img.width,
                height=img.height,
                seed=img.seed,
                format=FORMAT_TO_PROTO[img.format],
            )
            for img in result.images
        ]
        for img in result.images:
            if (img.width, img.height) != (gen.width, gen.height):
                deviations.append(
                    Deviation(
                        "size",
                        f"{gen.width}x{gen.height}",
                        f"{img.width}x{img.height}",
                        "provider delivered another size",
                    )
                )
                break
        all_devs = [*deviations, *result.deviations]
        return provider_pb2.GenerateImageResponse(
            images=images,
            model=result.model or gen.model,
            usage=image_pb2.Usage(
                images=len(images),
                megapixels=sum(i.megapixels for i in result.images),
                provider_seconds=result.provider_seconds,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                provider_job_id=result.provider_job_id,
                wall_seconds=wall,
            ),
            deviations=[
                image_pb2.Deviation(
                    field=d.field, requested=d.requested, delivered=d.delivered, reason=d.reason
                )
                for d in all_devs
            ],
        )
