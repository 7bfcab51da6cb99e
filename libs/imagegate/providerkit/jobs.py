"""Queued provider jobs: status polls that ride out blips, cancellation at the deadline."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import Pending, retry_after_from_headers, send

log = logging.getLogger(__name__)

# Answers to a status poll that are worth another poll rather than failing the job.
TRANSIENT_STATUSES = (408, 429, 500, 502, 503, 504)


async def poll_get(
    client: httpx.AsyncClient, url: str, *, deadline: Deadline, job_id: str
) -> httpx.Response | Pending:
    """One status GET of an accepted job; Pending when the poll failed in a way worth retrying.

    A dropped connection or a transient status loses nothing (the job lives on at the
    provider): Pending, after the provider's Retry-After when it sent one. Any other failure
    is billable, since the job may have run.
    """
    try:
        resp = await send(client, "GET", url, deadline=deadline)
    except ProviderError as err:
        if err.reason == reasons.PROVIDER_UNAVAILABLE:
            return Pending()
        err.billable, err.provider_job_id = True, job_id
        raise
    if resp.status_code in TRANSIENT_STATUSES:
        return Pending(after=retry_after_from_headers(resp.headers))
    return resp


def cancel_at_deadline(
    client: httpx.AsyncClient, method: str, url: str, *, what: str, job_id: str
) -> Callable[[Deadline], Awaitable[None]]:
    """A `poll_until` on_timeout that asks the provider to cancel the job (`method` `url`)."""

    async def cancel(deadline: Deadline) -> None:
        resp = await send(client, method, url, deadline=deadline)
        log.info(
            "cancelled %s at the deadline",
            what,
            extra={"provider_job_id": job_id, "http_status": resp.status_code},
        )

    return cancel
