"""One Together images/generations call, shared with the HF router's partner route."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.download import ResultSource, download_image
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import error_from_status, json_body, retry_after_from_headers
from imagegate.providerkit.synchronous import SpecialError, post_sync
from imagegate.providerkit.types import GenerationRequest, GenerationResult
from services.together import wire


def together_special(resp: httpx.Response, job_id: str) -> ProviderError | None:
    """Together's own readings: safety refusals, and rate limits sent as 400 "rate_limit"."""
    found = wire.special_error(resp, job_id)
    if found is None and wire.is_legacy_rate_limit(resp):
        found = error_from_status(
            resp, message="Together", job_id=job_id, reason=reasons.PROVIDER_RATE_LIMITED
        )
        found.retry_after_seconds = retry_after_from_headers(resp.headers)
    return found


@dataclass(frozen=True)
class TogetherCall:
    """A Together-compatible images/generations endpoint, reached through an adapter's client."""

    client: httpx.AsyncClient
    """The adapter's pooled client."""
    path: str
    """The endpoint's path on the client's base URL."""
    results: ResultSource
    """Where result URLs may point, when the answer carries URLs instead of base64."""
    what: str = "Together images/generations"
    """Names the call in error messages."""
    special: SpecialError = together_special
    """Provider-specific readings of an error answer."""

    async def generate(
        self, request: GenerationRequest, provider_model: str, deadline: Deadline
    ) -> GenerationResult:
        """Runs one generation and returns measured images."""
        body, deviations = wire.request_body(request, provider_model)
        resp = await post_sync(
            self.client,
            self.path,
            deadline=deadline,
            json=body,
            what=self.what,
            special=self.special,
        )
        job_id = resp.headers.get("x-request-id", "")
        parsed = await wire.parse_images(
            json_body(resp, billable=True, job_id=job_id),
            wanted=request.output_format,
            seed=request.seed,
            job_id=job_id,
        )
        images = list(parsed.images)
        single = len(parsed.url_items) == 1 and not images
        for url in parsed.url_items:
            images.append(
                await download_image(
                    self.client,
                    url,
                    deadline=deadline,
                    allowed_hosts=self.results.hosts,
                    loopback_ok=self.results.loopback_ok,
                    max_bytes=self.results.max_bytes,
                    wanted=request.output_format,
                    seed=request.seed if single else None,
                    job_id=parsed.job_id,
                )
            )
        return GenerationResult(
            images=images,
            provider_job_id=parsed.job_id,
            provider_seconds=parsed.provider_seconds,
            deviations=deviations,
            model=request.model,
        )
