"""One Together images/generations call, shared with the HF router's partner route."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.download import download_image
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import (
    error_from_status,
    json_body,
    retry_after_from_headers,
    send,
)
from imagegate.providerkit.types import GenerationRequest, GenerationResult
from services.together import wire

# Our own timeout fires this long before the servicer's, so the failure carries billable=true.
SYNC_MARGIN = 0.1

SpecialError = Callable[[httpx.Response, str], ProviderError | None]


async def post_sync(
    client: httpx.AsyncClient,
    path: str,
    *,
    deadline: Deadline,
    json: object,
    what: str,
    special: SpecialError,
    job_header: str = "x-request-id",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POSTs a synchronous generation; any answer but 200 becomes a ProviderError.

    A timeout or broken connection after sending is billable: a synchronous provider may finish
    (and bill) the job after we stopped waiting, and there is no job to cancel.
    """
    inner = Deadline(deadline.at - SYNC_MARGIN)
    try:
        resp = await send(client, "POST", path, deadline=inner, json=json, headers=headers)
    except ProviderError as err:
        # Connect failures never reached the provider; anything later may have been billed.
        if err.extra.get("request_sent") == "unknown":
            err.billable = True
        raise
    if resp.status_code == 200:
        return resp
    job_id = resp.headers.get(job_header, "")
    found = special(resp, job_id)
    if found is not None:
        raise found
    # A gateway timeout means the job may still have run.
    raise error_from_status(
        resp, message=what, job_id=job_id, billable=resp.status_code in (408, 504)
    )


def together_special(resp: httpx.Response, job_id: str) -> ProviderError | None:
    """Together's own readings: safety refusals, and rate limits sent as 400 "rate_limit"."""
    found = wire.special_error(resp, job_id)
    if found is None and wire.is_legacy_rate_limit(resp):
        found = error_from_status(
            resp, message="Together", job_id=job_id, reason=reasons.PROVIDER_RATE_LIMITED
        )
        found.retry_after_seconds = retry_after_from_headers(resp.headers)
    return found


async def generate(
    client: httpx.AsyncClient,
    path: str,
    request: GenerationRequest,
    provider_model: str,
    *,
    deadline: Deadline,
    result_hosts: Sequence[str],
    loopback_ok: bool,
    max_bytes: int,
    what: str = "Together images/generations",
    special: SpecialError = together_special,
) -> GenerationResult:
    """Runs one generation on a Together-compatible endpoint and returns measured images."""
    body, deviations = wire.request_body(request, provider_model)
    resp = await post_sync(client, path, deadline=deadline, json=body, what=what, special=special)
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
                client,
                url,
                deadline=deadline,
                allowed_hosts=result_hosts,
                loopback_ok=loopback_ok,
                max_bytes=max_bytes,
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
