"""Synchronous provider calls: one POST whose answer is the finished generation."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import error_from_status, send

# Our own timeout fires this long before the servicer's, so the failure carries billable=true.
SYNC_MARGIN = 0.1

SpecialError = Callable[[httpx.Response, str], ProviderError | None]
"""A provider's own reading of an error answer (response, job id); None: the generic table."""


async def post_sync(
    client: httpx.AsyncClient,
    path: str,
    *,
    deadline: Deadline,
    json: object = None,
    content: bytes | None = None,
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
        resp = await send(
            client, "POST", path, deadline=inner, json=json, content=content, headers=headers
        )
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
