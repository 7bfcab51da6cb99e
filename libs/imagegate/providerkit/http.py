"""Provider HTTP plumbing: one pooled client, deadline-bound sends, the generic error table."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json as jsonlib
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import certifi
import httpx
import httpx_aiohttp
import orjson

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.errors import ProviderError
from imagegate.telemetry import Telemetry

T = TypeVar("T")

# Request headers that carry credentials: never forwarded to result hosts, scrubbed from messages.
SECRET_HEADERS = ("authorization", "x-key", "x-api-key", "api-key", "proxy-authorization")
# Seconds before the deadline at which a send gives up.
SEND_MARGIN = 0.1
# How much of a provider's error text is quoted in our messages.
_DETAIL_LIMIT = 300
# Retry-After values above this are treated as "do not retry soon", not as a precise delay.
_MAX_RETRY_AFTER = 3600.0

_REASON_FOR_STATUS: dict[int, str] = {
    400: reasons.PROVIDER_INVALID_REQUEST,
    401: reasons.PROVIDER_AUTH_FAILED,
    402: reasons.PROVIDER_OUT_OF_CREDITS,
    403: reasons.PROVIDER_AUTH_FAILED,
    404: reasons.PROVIDER_INVALID_REQUEST,
    408: reasons.PROVIDER_TIMEOUT,
    413: reasons.PROVIDER_INVALID_REQUEST,
    422: reasons.PROVIDER_INVALID_REQUEST,
    429: reasons.PROVIDER_RATE_LIMITED,
    500: reasons.PROVIDER_UNAVAILABLE,
    502: reasons.PROVIDER_UNAVAILABLE,
    503: reasons.PROVIDER_UNAVAILABLE,
    504: reasons.PROVIDER_TIMEOUT,
}


class AiohttpTransport(httpx_aiohttp.AiohttpTransport):
    """httpx's interface over one aiohttp connection pool (C HTTP parser, no O(n²) pool scan).

    httpcore's pool re-checks every pooled connection for every waiting request each time a
    response completes, and its per-request machinery (anyio checkpoints, a failed `sniffio`
    import per request, h11 in Python) held about half of an adapter's CPU at 256 in flight.
    httpx-aiohttp maps every aiohttp connection error to ConnectTimeout, which `send` reads as
    "never sent"; only a failed or timed-out connect keeps that meaning here, anything after it
    (server disconnect, reset mid-answer) is a ReadError: the request may have arrived.
    """

    def __init__(self, max_connections: int) -> None:
        # One TLS context: building one loads the CA bundle (~33 ms, ~0.7 MB).
        tls = ssl.create_default_context(cafile=certifi.where())
        super().__init__(
            verify=tls,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as err:
            cause = err.__cause__
            if isinstance(cause, aiohttp.ConnectionTimeoutError):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(err), request=request) from cause
            raise httpx.ReadError(str(err) or type(cause).__name__, request=request) from cause


def build_client(
    *,
    base_url: str,
    headers: dict[str, str],
    max_connections: int,
    telemetry: Telemetry | None,
) -> httpx.AsyncClient:
    """The one pooled client of an adapter: HTTP/1.1 keep-alive, no redirects, traced.

    Credentials go in `headers` only, never in `base_url`, because URLs end up in spans.
    """
    client = httpx.AsyncClient(
        base_url=base_url,
        headers={"accept": "application/json", **headers},
        transport=AiohttpTransport(max_connections),
        timeout=httpx.Timeout(60.0, connect=10.0),
        follow_redirects=False,
        trust_env=False,
    )
    if telemetry is not None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(
            client,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
    return client


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date); None if absent."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), _MAX_RETRY_AFTER)


def retry_after_from_headers(
    headers: httpx.Headers, *, now: datetime | None = None
) -> float | None:
    """Retry delay from `retry-after-ms` (preferred, more precise) or `retry-after`."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return min(max(0.0, float(ms) / 1000), _MAX_RETRY_AFTER)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now=now)


def secrets_of(request: httpx.Request | None) -> list[str]:
    """Credential values a request carried (whole header values and their token part)."""
    if request is None:
        return []
    out: list[str] = []
    for name in SECRET_HEADERS:
        value = request.headers.get(name)
        if not value:
            continue
        out.append(value)
        _, _, token = value.partition(" ")
        if token:
            out.append(token)
    return [s for s in out if len(s) >= 4]


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by "[redacted]"."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _safe_url(url: httpx.URL) -> str:
    # Query strings may hold signatures (BFL's signed URLs); keep scheme, host and path only.
    return str(url.copy_with(query=None, fragment=None))


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline: Deadline,
    json: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """Sends one request within what is left of `deadline`; raises only ProviderError.

    Transport errors become PROVIDER_UNAVAILABLE, and any timeout (connect, slow headers or a
    body that trickles in past the deadline) PROVIDER_TIMEOUT. The body is fully read. The
    error's `extra["request_sent"]` is "false" when the request never reached the provider
    (connect failures) and "unknown" otherwise: a create that may have arrived is not resent.
    """
    # Give up a moment before the deadline so this error, with its details, wins the race
    # against the servicer's own deadline timer.
    remaining = deadline.remaining() - SEND_MARGIN
    if remaining <= 0:
        raise ProviderError(reasons.PROVIDER_TIMEOUT, f"deadline passed before {method} {url}")
    if json is not None:
        # orjson: several times faster than the json module on provider bodies.
        content = orjson.dumps(json)
        headers = {"content-type": "application/json", **(headers or {})}
    request = client.build_request(
        method,
        url,
        content=content,
        headers=headers,
        params=params,
        timeout=httpx.Timeout(remaining),
    )
    where = f"{method} {_safe_url(request.url)}"
    try:
        async with asyncio.timeout(remaining):
            response = await client.send(request)
    except (httpx.ConnectError, httpx.ConnectTimeout) as err:
        # The request never left: safe to send again, nothing to bill.
        reason = (
            reasons.PROVIDER_TIMEOUT
            if isinstance(err, httpx.ConnectTimeout)
            else reasons.PROVIDER_UNAVAILABLE
        )
        text = redact(str(err) or type(err).__name__, secrets_of(request))
        raise ProviderError(
            reason, f"{where}: {type(err).__name__}: {text}", extra={"request_sent": "false"}
        ) from None
    except (TimeoutError, httpx.TimeoutException):
        raise ProviderError(
            reasons.PROVIDER_TIMEOUT,
            f"{where}: no complete answer within {remaining:.2f}s",
            extra={"request_sent": "unknown"},
        ) from None
    except httpx.TransportError as err:
        text = redact(str(err) or type(err).__name__, secrets_of(request))
        raise ProviderError(
            reasons.PROVIDER_UNAVAILABLE,
            f"{where}: {type(err).__name__}: {text}",
            extra={"request_sent": "unknown"},
        ) from None
    except httpx.HTTPError as err:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE, f"{where}: {type(err).__name__}"
        ) from None
    return response


def json_body(resp: httpx.Response, *, billable: bool = False, job_id: str = "") -> Any:
    """The decoded JSON body; malformed or truncated JSON is PROVIDER_BAD_RESPONSE."""
    try:
        return orjson.loads(resp.content)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"HTTP {resp.status_code} body is not valid JSON ({len(resp.content)} bytes: {err})",
            http_status=resp.status_code,
            billable=billable,
            provider_job_id=job_id,
        ) from None


def json_object(
    resp: httpx.Response, *, billable: bool = False, job_id: str = ""
) -> dict[str, Any]:
    """The JSON body, which must be an object."""
    body = json_body(resp, billable=billable, job_id=job_id)
    if not isinstance(body, dict):
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"HTTP {resp.status_code} body is JSON {type(body).__name__}, expected an object",
            http_status=resp.status_code,
            billable=billable,
            provider_job_id=job_id,
        )
    return body


def error_detail(resp: httpx.Response) -> str:
    """The provider's own error text from the usual body shapes, shortened and scrubbed.

    Understands {"detail": str | [{"msg"}]}, {"title", "detail"}, {"error": str | [str] |
    {"message"}}, {"errors": [{"message"}]}, {"message"}; falls back to the raw text.
    """
    text = ""
    try:
        body = jsonlib.loads(resp.content) if resp.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        text = _detail_from_dict(body)
    if not text:
        text = resp.content[:_DETAIL_LIMIT].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    try:
        request: httpx.Request | None = resp.request
    except RuntimeError:
        request = None
    return redact(text, secrets_of(request))


def _detail_from_dict(body: dict[str, Any]) -> str:
    parts: list[str] = []
    detail = body.get("detail")
    if isinstance(body.get("title"), str):
        parts.append(body["title"])
    if isinstance(detail, str):
        parts.append(detail)
    elif isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict):
                parts.append(str(item.get("msg") or item.get("message") or item.get("type") or ""))
            else:
                parts.append(str(item))
    error = body.get("error")
    if isinstance(error, str):
        parts.append(error)
    elif isinstance(error, list):
        parts.extend(str(e) for e in error)
    elif isinstance(error, dict) and error.get("message"):
        parts.append(str(error["message"]))
    errors = body.get("errors")
    if isinstance(errors, list):
        parts.extend(str(e.get("message", "")) for e in errors if isinstance(e, dict))
    if not parts and isinstance(body.get("message"), str):
        parts.append(body["message"])
    return ": ".join(p for p in parts if p)


def error_from_status(
    resp: httpx.Response,
    *,
    message: str,
    billable: bool = False,
    job_id: str = "",
    reason: str | None = None,
) -> ProviderError:
    """The generic table from an HTTP error answer (see docs/errors.md).

    429 -> RATE_LIMITED, 401/403 -> AUTH_FAILED, 402 -> OUT_OF_CREDITS, 400/404/413/422 ->
    INVALID_REQUEST, 408/504 -> TIMEOUT, 500/502/503 -> UNAVAILABLE, anything else ->
    BAD_RESPONSE. Retry-After is kept (RetryInfo) on 429 and 5xx. Adapters detect provider
    specific cases first, or pass `reason` to override the table.
    """
    status = resp.status_code
    chosen = reason or _REASON_FOR_STATUS.get(status)
    if chosen is None:
        chosen = reasons.PROVIDER_UNAVAILABLE if status >= 500 else reasons.PROVIDER_BAD_RESPONSE
    retry_after = None
    if status == 429 or status >= 500:
        retry_after = retry_after_from_headers(resp.headers)
    detail = error_detail(resp)
    text = f"{message}: HTTP {status}" + (f": {detail}" if detail else "")
    return ProviderError(
        chosen,
        text,
        http_status=status,
        retry_after_seconds=retry_after,
        billable=billable,
        provider_job_id=job_id,
    )


@dataclass(frozen=True)
class Pending:
    """What a poll step returns while the job is not done."""

    after: float | None = None
    """Seconds to wait before the next step (e.g. the provider's retry-after); None: interval."""


async def poll_until(
    deadline: Deadline,
    interval: float,
    fn: Callable[[Deadline], Awaitable[T | Pending]],
    *,
    on_timeout: Callable[[Deadline], Awaitable[None]] | None = None,
    what: str = "job",
    job_id: str = "",
    billable: bool = True,
    max_interval: float = 2.0,
    backoff: float = 1.5,
    reserve: float = 0.25,
    background: set[asyncio.Task[Any]] | None = None,
) -> T:
    """Runs `fn` until it returns a result, sleeping between steps, within `deadline`.

    Polling stops `reserve` seconds (at most a fifth of the time left) before the deadline so
    `on_timeout` (cancel the provider job) still has time to run before the caller gives up;
    then PROVIDER_TIMEOUT is raised. The sleep grows by `backoff` up to `max_interval`.
    If the caller cancels the call, `on_timeout` runs as a task kept in `background` (the
    adapter's set, drained in `aclose`).
    """
    keep = min(reserve, max(0.0, deadline.remaining()) / 5)
    inner = Deadline(deadline.at - keep)
    delay = interval
    try:
        while True:
            if inner.expired():
                break
            try:
                step = await fn(inner)
            except ProviderError as err:
                # A step given `inner` that times out means polling time is up: go cancel.
                if err.reason != reasons.PROVIDER_TIMEOUT:
                    raise
                break
            if not isinstance(step, Pending):
                return step
            wait = step.after if step.after is not None else delay
            delay = min(max_interval, delay * backoff)
            if inner.remaining() <= wait:
                await asyncio.sleep(max(0.0, inner.remaining()))
                break
            await asyncio.sleep(wait)
    except asyncio.CancelledError:
        if on_timeout is not None and background is not None:
            # The caller went away: still tell the provider, without delaying the cancellation.
            spawn_cleanup(background, on_timeout(Deadline.after(5.0)))
        raise
    if on_timeout is not None:
        with contextlib.suppress(ProviderError):
            await on_timeout(deadline)
    raise ProviderError(
        reasons.PROVIDER_TIMEOUT,
        f"{what} {job_id} not finished when the deadline passed".replace("  ", " "),
        billable=billable,
        provider_job_id=job_id,
    )


def spawn_cleanup(background: set[asyncio.Task[Any]], coro: Awaitable[Any]) -> None:
    """Runs `coro` in the background, errors ignored; `background` holds it until it ends."""

    async def run() -> None:
        with contextlib.suppress(Exception):
            await coro

    task = asyncio.get_running_loop().create_task(run())
    background.add(task)
    task.add_done_callback(background.discard)
