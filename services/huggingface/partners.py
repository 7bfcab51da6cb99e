"""Partner routes of the HF router other than Together: fal-ai (sync) and nscale (images API).

Both are reached as `https://router.huggingface.co/{partner}/{partner's own path}` with the HF
token; bodies and answers are the partner's own (docs/providers-huggingface.md has the sources).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.download import ResultSource, download_image
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import json_body
from imagegate.providerkit.synchronous import SpecialError, post_sync
from imagegate.providerkit.types import GenerationRequest, GenerationResult, OutputFormat
from services.together import wire as together_wire


def fal_body(request: GenerationRequest) -> dict[str, Any]:
    """fal's text-to-image input: HF turns width/height into `image_size` (fal_ai.py)."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "image_size": {"width": request.width, "height": request.height},
        "num_images": request.num_images,
        # Images come back inline as data URIs: no download from a third host.
        "sync_mode": True,
        "output_format": "png" if request.output_format is OutputFormat.PNG else "jpeg",
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.steps is not None:
        body["num_inference_steps"] = request.steps
    return body


def nscale_body(request: GenerationRequest, provider_model: str) -> dict[str, Any]:
    """Nscale's images/generations body: `size` "WxH", b64_json; steps and cfg are not taken."""
    body: dict[str, Any] = {
        "model": provider_model,
        "prompt": request.prompt,
        "size": f"{request.width}x{request.height}",
        "n": request.num_images,
        "response_format": "b64_json",
    }
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def _bad(message: str, job_id: str) -> ProviderError:
    return ProviderError(
        reasons.PROVIDER_BAD_RESPONSE, message, billable=True, provider_job_id=job_id
    )


@dataclass(frozen=True)
class PartnerCall:
    """One synchronous partner call through the HF router (fal-ai or nscale)."""

    client: httpx.AsyncClient
    """The adapter's pooled client (base URL: the HF router)."""
    results: ResultSource
    """Where result URLs may point, when a partner answers with URLs."""
    special: SpecialError
    """HF and partner readings of error answers."""

    async def fal(
        self, request: GenerationRequest, provider_model: str, deadline: Deadline
    ) -> GenerationResult:
        """POST /fal-ai/{fal app}: `images[].url` (data URIs with sync_mode), `timings.inference`."""
        resp = await post_sync(
            self.client,
            f"/fal-ai/{provider_model}",
            deadline=deadline,
            json=fal_body(request),
            what="HF router -> fal-ai",
            special=self.special,
            job_header="x-fal-request-id",
        )
        job_id = resp.headers.get("x-fal-request-id", "")
        body = json_body(resp, billable=True, job_id=job_id)
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise _bad("fal answer has no images list", job_id)
        flagged = body.get("has_nsfw_concepts")
        if isinstance(flagged, list) and any(flagged):
            raise ProviderError(
                reasons.PROVIDER_CONTENT_MODERATED,
                "fal's safety checker flagged the result (has_nsfw_concepts)",
                billable=True,
                provider_job_id=job_id,
            )
        urls: list[str] = []
        for item in images:
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str) or not url:
                raise _bad("fal image without a url", job_id)
            urls.append(url)
        raw_seed = body.get("seed")
        seed = raw_seed if isinstance(raw_seed, int) else request.seed
        out = [
            await self._image(u, request, deadline, seed + i if seed is not None else None, job_id)
            for i, u in enumerate(urls)
        ]
        timings = body.get("timings")
        seconds = timings.get("inference") if isinstance(timings, dict) else None
        return GenerationResult(
            images=out,
            provider_job_id=job_id,
            provider_seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
            model=request.model,
        )

    async def nscale(
        self, request: GenerationRequest, provider_model: str, deadline: Deadline
    ) -> GenerationResult:
        """POST /nscale/v1/images/generations: `data[].b64_json` (OpenAI images shape)."""
        resp = await post_sync(
            self.client,
            "/nscale/v1/images/generations",
            deadline=deadline,
            json=nscale_body(request, provider_model),
            what="HF router -> nscale images/generations",
            special=self.special,
        )
        job_id = resp.headers.get("x-request-id", "")
        parsed = await together_wire.parse_images(
            json_body(resp, billable=True, job_id=job_id),
            wanted=request.output_format,
            seed=request.seed,
            job_id=job_id,
        )
        images = list(parsed.images)
        for url in parsed.url_items:
            images.append(await self._image(url, request, deadline, None, parsed.job_id))
        if len(images) != request.num_images:
            raise _bad(f"asked for {request.num_images} images, got {len(images)}", job_id)
        return GenerationResult(
            images=images,
            provider_job_id=parsed.job_id,
            provider_seconds=parsed.provider_seconds,
            model=request.model,
        )

    async def _image(
        self,
        url: str,
        request: GenerationRequest,
        deadline: Deadline,
        seed: int | None,
        job_id: str,
    ) -> Any:
        return await download_image(
            self.client,
            url,
            deadline=deadline,
            allowed_hosts=self.results.hosts,
            loopback_ok=self.results.loopback_ok,
            max_bytes=self.results.max_bytes,
            wanted=request.output_format,
            seed=seed,
            job_id=job_id,
        )


def provider_order(body: Any, model: str) -> list[tuple[str, str]]:
    """(partner, partner's model id) for text-to-image, live, in the account's order.

    The Hub answers `inferenceProviderMapping` as an object keyed by provider (older) or a list
    of {provider, providerId, status, task} (newer); both keep the order of the account's
    Inference Provider settings.
    """
    mapping = body.get("inferenceProviderMapping") if isinstance(body, dict) else None
    entries: list[dict[str, Any]] = []
    if isinstance(mapping, dict):
        entries = [{"provider": k, **v} for k, v in mapping.items() if isinstance(v, dict)]
    elif isinstance(mapping, list):
        entries = [e for e in mapping if isinstance(e, dict)]
    else:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"the Hub has no inferenceProviderMapping for {model}: {json.dumps(body)[:200]}",
        )
    return [
        (str(e["provider"]), str(e.get("providerId") or model))
        for e in entries
        if e.get("task") == "text-to-image"
        and e.get("status", "live") == "live"
        and e.get("provider")
    ]
