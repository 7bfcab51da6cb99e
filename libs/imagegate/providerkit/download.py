"""Result retrieval: fetch a provider's result URL safely, within the deadline, and normalize it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import SECRET_HEADERS, SEND_MARGIN, error_from_status
from imagegate.providerkit.images import normalize_image
from imagegate.providerkit.types import GeneratedImage, OutputFormat

# Images bigger than this are decoded and converted in a worker thread.
_INLINE_BYTES = 256 * 1024
# Result hosts may redirect (CDN edges); each hop is checked against the allowlist again.
_MAX_REDIRECTS = 3
_EXPIRED = (403, 404, 410)


@dataclass(frozen=True)
class ResultSource:
    """Where an adapter may download result images from, and how big one may be."""

    hosts: Sequence[str]
    """Allowed result hosts (exact, or suffix for entries starting with ".")."""
    loopback_ok: bool
    """Whether plain http on this machine is allowed (emulators behind a loopback override)."""
    max_bytes: int
    """Largest image accepted."""


def is_loopback_host(host: str) -> bool:
    """Whether `host` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """Exact match, or suffix match for entries starting with "." (".fal.media")."""
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower()
        if entry.startswith("."):
            if host.endswith(entry) or host == entry[1:]:
                return True
        elif host == entry:
            return True
    return False


def check_result_url(url: str, *, allowed_hosts: Sequence[str], loopback_ok: bool) -> httpx.URL:
    """Parses a result URL and refuses anything but https on a known host (or loopback http)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as err:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE, f"result URL is not a URL: {err}", billable=True
        ) from None
    host = parsed.host
    loopback = loopback_ok and is_loopback_host(host)
    if parsed.scheme == "https" and (host_allowed(host, allowed_hosts) or loopback):
        return parsed
    if parsed.scheme == "http" and loopback:
        return parsed
    raise ProviderError(
        reasons.PROVIDER_BAD_RESPONSE,
        f"result URL {parsed.scheme}://{host} is not an https URL on a known result host "
        f"({', '.join(allowed_hosts)})",
        billable=True,
        extra={"result_host": host},
    )


def check_api_url(
    url: object, *, base_url: str, allowed_hosts: Sequence[str], loopback_ok: bool
) -> str:
    """A URL from a provider's JSON that our credentials will be sent to (status, poll, cancel).

    It must be https on the base URL's host or an allowed host; plain http only on loopback
    when `loopback_ok`. Anything else is PROVIDER_BAD_RESPONSE, so the key never goes elsewhere.
    """
    if not isinstance(url, str) or not url:
        raise ProviderError(reasons.PROVIDER_BAD_RESPONSE, "provider answer lacks a job URL")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE, "provider job URL is not a URL"
        ) from None
    base_host = httpx.URL(base_url).host
    host = parsed.host
    loopback = loopback_ok and is_loopback_host(host)
    known = host == base_host or host_allowed(host, allowed_hosts)
    if (parsed.scheme == "https" and (known or loopback)) or (parsed.scheme == "http" and loopback):
        return url
    raise ProviderError(
        reasons.PROVIDER_BAD_RESPONSE,
        f"provider job URL points at {parsed.scheme}://{host}, not a known API host",
        extra={"job_url_host": host},
    )


def decode_data_uri(uri: str, *, max_bytes: int) -> bytes:
    """The bytes of a `data:image/...;base64,` URI (fal's sync_mode output)."""
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise ProviderError(reasons.PROVIDER_BAD_RESPONSE, "data URI is not base64", billable=True)
    if len(payload) * 3 // 4 > max_bytes:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"inline image exceeds the {max_bytes}-byte cap",
            billable=True,
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE, f"inline image is not valid base64: {err}", billable=True
        ) from None


async def to_image(data: bytes, wanted: OutputFormat, *, seed: int | None) -> GeneratedImage:
    """normalize_image, off the event loop for big images."""
    if len(data) > _INLINE_BYTES:
        return await asyncio.to_thread(normalize_image, data, wanted, seed=seed)
    return normalize_image(data, wanted, seed=seed)


async def download_image(
    client: httpx.AsyncClient,
    url: str,
    *,
    deadline: Deadline,
    allowed_hosts: Sequence[str],
    loopback_ok: bool,
    max_bytes: int,
    wanted: OutputFormat,
    seed: int | None = None,
    job_id: str = "",
) -> GeneratedImage:
    """Downloads one result image and returns it measured and converted to `wanted`.

    https only, host in `allowed_hosts` (plain http only on loopback when `loopback_ok`); the
    adapter's credentials are not sent to result hosts; the body is capped at `max_bytes` while
    streaming; 403/404/410 mean the signed URL expired. The format comes from the bytes, never
    from the declared content type. Every failure is a billable ProviderError: the job ran.
    """
    try:
        if url.startswith("data:"):
            data = decode_data_uri(url, max_bytes=max_bytes)
        else:
            data = await _fetch(
                client,
                url,
                deadline=deadline,
                allowed_hosts=allowed_hosts,
                loopback_ok=loopback_ok,
                max_bytes=max_bytes,
            )
        return await to_image(data, wanted, seed=seed)
    except ProviderError as err:
        err.billable = True
        err.provider_job_id = err.provider_job_id or job_id
        raise


async def download_images(
    client: httpx.AsyncClient,
    urls: Sequence[str],
    source: ResultSource,
    *,
    deadline: Deadline,
    wanted: OutputFormat,
    first_seed: int | None,
    job_id: str,
) -> list[GeneratedImage]:
    """`download_image` for every URL concurrently; image i reports seed `first_seed + i`."""
    return list(
        await asyncio.gather(
            *(
                download_image(
                    client,
                    url,
                    deadline=deadline,
                    allowed_hosts=source.hosts,
                    loopback_ok=source.loopback_ok,
                    max_bytes=source.max_bytes,
                    wanted=wanted,
                    seed=first_seed + i if first_seed is not None else None,
                    job_id=job_id,
                )
                for i, url in enumerate(urls)
            )
        )
    )


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    deadline: Deadline,
    allowed_hosts: Sequence[str],
    loopback_ok: bool,
    max_bytes: int,
) -> bytes:
    target = check_result_url(url, allowed_hosts=allowed_hosts, loopback_ok=loopback_ok)
    remaining = deadline.remaining() - SEND_MARGIN
    if remaining <= 0:
        raise ProviderError(reasons.PROVIDER_TIMEOUT, "deadline passed before the result download")
    where = f"result {target.host}{target.path}"
    try:
        async with asyncio.timeout(remaining):
            for _ in range(_MAX_REDIRECTS + 1):
                request = client.build_request(
                    "GET", target, headers={"accept": "image/*"}, timeout=httpx.Timeout(remaining)
                )
                for name in SECRET_HEADERS:
                    request.headers.pop(name, None)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        target = check_result_url(
                            str(target.join(response.headers["location"])),
                            allowed_hosts=allowed_hosts,
                            loopback_ok=loopback_ok,
                        )
                        continue
                    return await _read_capped(response, where, max_bytes)
                finally:
                    await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise ProviderError(
            reasons.PROVIDER_TIMEOUT, f"{where}: download not finished within the deadline"
        ) from None
    except httpx.TransportError as err:
        raise ProviderError(
            reasons.PROVIDER_UNAVAILABLE, f"{where}: {type(err).__name__}: {err}"
        ) from None
    raise ProviderError(reasons.PROVIDER_BAD_RESPONSE, f"{where}: too many redirects")


async def _read_capped(response: httpx.Response, where: str, max_bytes: int) -> bytes:
    if response.status_code in _EXPIRED:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"{where}: result URL expired or no longer available (HTTP {response.status_code})",
            http_status=response.status_code,
            extra={"result_expired": "true"},
        )
    if response.status_code != 200:
        await response.aread()
        raise error_from_status(response, message=f"{where}: download failed")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"{where}: image of {declared} bytes exceeds the {max_bytes}-byte cap",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ProviderError(
                reasons.PROVIDER_BAD_RESPONSE, f"{where}: image exceeds the {max_bytes}-byte cap"
            )
        chunks.append(chunk)
    return b"".join(chunks)
