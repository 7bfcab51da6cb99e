"""Emulator framework: an aiohttp server per provider API with a call log and switchable faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import json
import math
import secrets
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw

from imagegate.inputs.checks import InputImage, InputLimits, inspect
from imagegate.inputs.encoding import from_data_uri, parse_multipart
from imagegate.providerkit.images import encode
from imagegate.providerkit.types import OutputFormat

FAULT_KINDS = (
    "rate_limit",
    "error_500",
    "error_502",
    "error_503",
    "hang",
    "slow_body",
    "malformed_json",
    "moderation",
    "expired_url",
    "never_complete",
    "wrong_content_type",
    "auth_failed",
    "out_of_credits",
)
"""Every fault an emulator can inject (docs/errors.md says what each maps to)."""

CDN_PREFIX = "/_cdn/"
"""Path under which an emulator serves its result files (its stand-in for the provider CDN)."""

_SECRET_HEADER_NAMES = frozenset({"authorization", "x-key", "x-api-key", "api-key"})
# How long a hanging handler waits at most (stop() releases it at once).
_HANG_SECONDS = 600.0
# slow_body: one chunk this often, for this long in total.
_SLOW_CHUNK_EVERY = 0.25
_SLOW_TOTAL = 60.0


@dataclass
class Fault:
    """A fault to inject into the next matching requests."""

    kind: str
    """One of FAULT_KINDS."""
    count: int | None = None
    """How many requests it applies to; None until cleared."""
    retry_after: float | None = None
    """Retry-After seconds sent with rate_limit and error_503."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1 (or null for 'until cleared')")


class FaultSwitch:
    """The one active fault of an emulator, consumed by the handlers it applies to."""

    def __init__(self) -> None:
        self._fault: Fault | None = None

    @property
    def active(self) -> Fault | None:
        """The fault in force, if any."""
        return self._fault

    def set(self, fault: Fault) -> None:
        """Replaces the active fault."""
        self._fault = fault

    def clear(self) -> None:
        """Removes the active fault."""
        self._fault = None

    def peek(self, *kinds: str) -> Fault | None:
        """The active fault when it is one of `kinds`, without consuming it."""
        f = self._fault
        return f if f is not None and f.kind in kinds else None

    def take(self, *kinds: str) -> Fault | None:
        """The active fault when it is one of `kinds`, counting one use of it."""
        f = self.peek(*kinds)
        if f is not None and f.count is not None:
            f.count -= 1
            if f.count <= 0:
                self._fault = None
        return f


@dataclass
class Call:
    """One request the emulator received."""

    method: str
    """HTTP method."""
    path: str
    """Path without the query."""
    query: dict[str, str]
    """Query parameters."""
    headers: dict[str, str]
    """Request headers (lower-case names)."""
    body: Any
    """Decoded JSON body, the raw text when not JSON, or None."""
    at: float = field(default_factory=time.monotonic)
    """Monotonic arrival time."""


@dataclass
class StoredFile:
    """A result file served under CDN_PREFIX."""

    data: bytes
    """Bytes served."""
    content_type: str
    """Content-Type header served (may lie, on purpose)."""
    expires_at: float | None = None
    """Monotonic time after which the URL answers as expired; None: never."""


@dataclass
class Charge:
    """One line of the emulator's own bill: what its provider charges for one job, by the
    provider's published rule (independent of imagegate's catalog and pricing code)."""

    job_id: str
    """The provider's job, task, prediction or request id."""
    model: str
    """Model billed."""
    quantity: Decimal
    """Units billed (whole megapixels, images, seconds or tokens)."""
    unit: str
    """"megapixel", "image", "second" or "token"."""
    amount: Decimal
    """Exact amount in micro-USD before the invoice rounds it."""

    @property
    def micros(self) -> int:
        """The invoice line in whole micro-USD (half up)."""
        return int(self.amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def whole_megapixels(width: int, height: int) -> int:
    """Megapixels of one image rounded up to a whole one (fal's and Together's rule)."""
    return max(1, math.ceil(Decimal(width * height) / Decimal(1_000_000)))


@functools.lru_cache(maxsize=256)
def render_image(width: int, height: int, fmt: OutputFormat, seed: int = 0) -> bytes:
    """A real image of exactly width x height: a seeded gradient with a few shapes."""
    rng = (seed * 2654435761) & 0xFFFFFFFF
    c1 = (rng & 0xFF, (rng >> 8) & 0xFF, (rng >> 16) & 0xFF)
    c2 = (255 - c1[0], 255 - c1[1], (c1[2] + 128) % 256)
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.composite(
        Image.new("RGB", (width, height), c1), Image.new("RGB", (width, height), c2), gradient
    )
    draw = ImageDraw.Draw(img)
    for i in range(4):
        x = (rng >> (i * 3)) % max(1, width)
        y = (rng >> (i * 5)) % max(1, height)
        r = max(2, min(width, height) // 8)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c2 if i % 2 else c1)
    return encode(img, fmt)


def stamp(data: bytes, fmt: OutputFormat, text: str) -> bytes:
    """The same picture with `text` in its metadata (a PNG tEXt chunk after IHDR, a JPEG COM
    segment after SOI), so two answers sharing one render still differ byte for byte.

    WebP comes back unchanged (its RIFF size would need rewriting; nothing needs it).
    """
    body = text.encode("latin-1")
    if fmt is OutputFormat.PNG:
        chunk = b"tEXt" + b"imagegate-emulator\x00" + body
        crc = zlib.crc32(chunk).to_bytes(4, "big")
        end_of_ihdr = 8 + 4 + 4 + 13 + 4
        return (
            data[:end_of_ihdr]
            + (len(chunk) - 4).to_bytes(4, "big")
            + chunk
            + crc
            + data[end_of_ihdr:]
        )
    if fmt is OutputFormat.JPEG:
        return data[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]
    return data


class Emulator:
    """Base of every provider emulator.

    A subclass sets `name`, adds its provider routes in `add_routes`, checks credentials with
    `authorized` and decides where each fault of FAULT_KINDS applies. The base serves result
    files under CDN_PREFIX (applying expired_url and slow_body there), records every call and
    exposes the control API: POST/DELETE /_emulator/faults, GET/DELETE /_emulator/calls,
    POST /_emulator/latency.
    """

    name: str = ""
    """Provider name, e.g. "fal"; `python -m imagegate.emulators <name>` finds it by this."""
    expired_status: int = 403
    """Status the CDN answers for an expired result URL."""

    def __init__(self, *, latency: float = 0.0, key: str | None = None) -> None:
        self.latency = latency
        """Seconds added to each generation."""
        self.key = key
        """Accepted credential; None accepts any non-empty one."""
        self.faults = FaultSwitch()
        """The fault switch (also reachable over HTTP)."""
        self.calls: list[Call] = []
        """Every provider request received (control and CDN requests excluded)."""
        self.cdn_calls: list[Call] = []
        """Every result-file request received."""
        self.files: dict[str, StoredFile] = {}
        """Result files by token."""
        self.bill: list[Charge] = []
        """What the provider would charge, one line per billed job (refunds remove lines)."""
        self.pictures = 0
        """Distinct pictures rendered at most (0: one per seed). With N, a seed reuses the render
        of seed % N, stamped with the seed (`stamp`), so answers stay distinct byte for byte
        while PNG/JPEG encoding stops costing the bench machine's CPU (a real provider's
        rendering runs on its own machines)."""
        self.in_flight = 0
        """Provider requests being handled right now (control and CDN requests excluded)."""
        self.peak_in_flight = 0
        """Most provider requests handled at once since start (or reset_peak())."""
        self._runner: web.AppRunner | None = None
        self._base_url = ""
        self._stopping = asyncio.Event()
        self._activity = asyncio.Event()

    # ---- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving and returns the base URL, e.g. "http://127.0.0.1:40123"."""
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/_emulator/faults", self._set_fault)
        app.router.add_delete("/_emulator/faults", self._clear_fault)
        app.router.add_get("/_emulator/calls", self._list_calls)
        app.router.add_delete("/_emulator/calls", self._clear_calls)
        app.router.add_post("/_emulator/latency", self._set_latency)
        app.router.add_get(CDN_PREFIX + "{token:.+}", self._serve_file)
        self.add_routes(app)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.host, self.port = host, int(bound)
        self._base_url = f"http://{host}:{bound}"
        return self._base_url

    async def stop(self) -> None:
        """Releases hanging handlers and stops the server."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """http://host:port of the running emulator."""
        return self._base_url

    @property
    def alt_base_url(self) -> str:
        """The same server under another host name (localhost), for cross-host URLs."""
        return f"http://localhost:{self.port}"

    # ---- the bill

    def charge(
        self, job_id: str, model: str, quantity: Decimal | int, unit: str, unit_price: str
    ) -> None:
        """Adds an invoice line: `quantity` units at `unit_price` micro-USD (a decimal text)."""
        q = Decimal(quantity)
        self.bill.append(Charge(job_id, model, q, unit, q * Decimal(unit_price)))

    def refund(self, job_id: str) -> None:
        """Removes a job's lines (e.g. a moderated BFL task, which is not charged)."""
        self.bill = [c for c in self.bill if c.job_id != job_id]

    def billed_micros(self) -> int:
        """The bill's total in micro-USD: the sum of its rounded lines."""
        return sum(c.micros for c in self.bill)

    # ---- for subclasses

    def add_routes(self, app: web.Application) -> None:
        """Adds the provider's routes."""
        raise NotImplementedError

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the accepted credential (subclasses read their header)."""
        return True

    def credential_ok(self, presented: str | None) -> bool:
        """Whether a presented credential is acceptable."""
        if not presented:
            return False
        return presented == self.key if self.key is not None else True

    def calls_to(self, path_part: str, method: str | None = None) -> list[Call]:
        """Recorded calls whose path contains `path_part` (and with `method`, when given)."""
        return [
            c for c in self.calls if path_part in c.path and (method is None or c.method == method)
        ]

    def store_file(
        self,
        data: bytes,
        content_type: str,
        *,
        ttl: float | None = None,
        suffix: str = "",
        base_url: str | None = None,
    ) -> str:
        """Keeps a result file and returns its URL under CDN_PREFIX."""
        token = secrets.token_hex(8) + suffix
        expires = time.monotonic() + ttl if ttl is not None else None
        self.files[token] = StoredFile(data, content_type, expires)
        return f"{base_url or self._base_url}{CDN_PREFIX}{token}"

    def result_image(
        self, width: int, height: int, fmt: OutputFormat, seed: int
    ) -> tuple[bytes, str, OutputFormat]:
        """Renders a result; under wrong_content_type it is JPEG labelled as another type.

        Returns (bytes, declared content type, actual format).
        """
        if self.faults.take("wrong_content_type"):
            data = render_image(width, height, OutputFormat.JPEG, seed)
            declared = OutputFormat.PNG if fmt is OutputFormat.JPEG else fmt
            if declared is OutputFormat.JPEG:
                declared = OutputFormat.PNG
            return data, declared.mime_type, OutputFormat.JPEG
        if self.pictures and fmt is not OutputFormat.WEBP:
            data = stamp(render_image(width, height, fmt, seed % self.pictures), fmt, str(seed))
            return data, fmt.mime_type, fmt
        return render_image(width, height, fmt, seed), fmt.mime_type, fmt

    async def generation_delay(self) -> None:
        """Waits `latency` seconds (released early by stop())."""
        if self.latency > 0:
            await self.wait(self.latency)

    async def wait(self, seconds: float) -> None:
        """Sleeps up to `seconds`, returning early when the emulator stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def hang(self) -> web.StreamResponse:
        """Never answers within any reasonable deadline."""
        await self.wait(_HANG_SECONDS)
        return web.Response(status=504, text="emulator stopped while hanging")

    async def slow(
        self,
        request: web.Request,
        data: bytes,
        *,
        content_type: str = "application/json",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Sends headers at once, then the body a few bytes at a time, far too slowly."""
        resp = web.StreamResponse(status=status, headers=dict(headers or {}))
        resp.content_type = content_type
        resp.content_length = len(data)
        await resp.prepare(request)
        steps = int(_SLOW_TOTAL / _SLOW_CHUNK_EVERY)
        chunk = max(1, len(data) // steps)
        for i in range(0, len(data), chunk):
            if self._stopping.is_set():
                break
            await resp.write(data[i : i + chunk])
            await self.wait(_SLOW_CHUNK_EVERY)
        return resp

    @staticmethod
    def json_response(
        payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """A JSON answer (a Content-Type in `headers`, e.g. problem+json, is kept)."""
        extra = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
        content_type = next(
            (v for k, v in (headers or {}).items() if k.lower() == "content-type"),
            "application/json",
        )
        return web.Response(
            status=status, text=json.dumps(payload), content_type=content_type, headers=extra
        )

    @staticmethod
    def malformed_json(status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        """A JSON answer cut off in the middle (a truncated body)."""
        return web.Response(
            status=status,
            text='{"id": "trunc", "status": "proc',
            content_type="application/json",
            headers=dict(headers or {}),
        )

    @staticmethod
    def retry_after_headers(fault: Fault, default: float = 1.0) -> dict[str, str]:
        """The Retry-After header for a fault."""
        value = fault.retry_after if fault.retry_after is not None else default
        return {"Retry-After": f"{value:g}"}

    # ---- internals

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_emulator/"):
            body: Any = None
            if request.can_read_body:
                raw = await request.read()
                if request.content_type == "multipart/form-data":
                    body = multipart_summary(raw, request.headers.get("content-type", ""))
                else:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
            call = Call(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
            cdn = request.path.startswith(CDN_PREFIX)
            (self.cdn_calls if cdn else self.calls).append(call)
            if not cdn:
                return await self._counted(request, handler)
        self._notify()
        try:
            return await handler(request)
        finally:
            self._notify()

    async def _counted(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self._notify()
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            self._notify()

    def reset_peak(self) -> None:
        """Starts counting peak_in_flight afresh from what is in flight now."""
        self.peak_in_flight = self.in_flight

    def _notify(self) -> None:
        self._activity.set()
        self._activity = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Waits until `predicate()` holds, re-checking whenever a request arrives or ends."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._activity.wait()

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        stored = self.files.get(request.match_info["token"])
        if stored is None:
            return web.Response(status=404, text="no such file")
        expired = stored.expires_at is not None and time.monotonic() > stored.expires_at
        if expired or self.faults.take("expired_url"):
            return web.Response(
                status=self.expired_status,
                text="<Error><Code>AuthenticationFailed</Code><Message>Signed expiry time has "
                "passed</Message></Error>",
                content_type="application/xml",
            )
        if self.faults.take("slow_body"):
            return await self.slow(request, stored.data, content_type=stored.content_type)
        return web.Response(
            body=stored.data,
            content_type=stored.content_type,
            headers={"Cache-Control": "public,max-age=3600"},
        )

    async def _set_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            fault = Fault(
                kind=str(body["kind"]),
                count=body.get("count"),
                retry_after=body.get("retry_after"),
            )
        except (ValueError, KeyError, TypeError) as err:
            return self.json_response({"error": str(err), "kinds": list(FAULT_KINDS)}, 400)
        self.faults.set(fault)
        return self.json_response({"fault": asdict(fault)})

    async def _clear_fault(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return self.json_response({"fault": None})

    async def _list_calls(self, request: web.Request) -> web.Response:
        return self.json_response(
            {
                "calls": [_call_json(c) for c in self.calls],
                "cdn_calls": [_call_json(c) for c in self.cdn_calls],
            }
        )

    async def _clear_calls(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.cdn_calls.clear()
        return self.json_response({"calls": []})

    async def _set_latency(self, request: web.Request) -> web.Response:
        try:
            self.latency = max(0.0, float((await request.json())["seconds"]))
        except (ValueError, KeyError, TypeError) as err:
            return self.json_response({"error": str(err)}, 400)
        return self.json_response({"latency": self.latency})


def _call_json(call: Call) -> dict[str, Any]:
    # Credentials are masked: the call log is served over HTTP for demos.
    headers = {k: ("***" if k in _SECRET_HEADER_NAMES else v) for k, v in call.headers.items()}
    return {
        "method": call.method,
        "path": call.path,
        "query": call.query,
        "headers": headers,
        "body": call.body,
    }


def new_id(prefix: str = "") -> str:
    """A random job id."""
    return prefix + secrets.token_hex(10)


def image_bytes_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def multipart_summary(raw: bytes, content_type: str) -> dict[str, Any]:
    """A multipart body for the call log: text fields as text, files as their facts (lists when a
    field repeats)."""
    out: dict[str, Any] = {}
    for name, filename, data in parse_multipart(raw, content_type):
        value: Any = (
            {"filename": filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if filename is not None
            else data.decode("utf-8", "replace")
        )
        if name in out:
            prior = out[name]
            out[name] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            out[name] = value
    return out


def input_problem(
    data: bytes | None,
    what: str,
    *,
    max_bytes: int,
    formats: tuple[str, ...] = ("png", "jpeg", "webp"),
) -> tuple[InputImage | None, str | None]:
    """Checks one uploaded input image as a provider does: (facts, None) or (None, message)."""
    if not data:
        return None, f"{what} is empty or not valid base64"
    limits = InputLimits(max_bytes=max_bytes, formats=formats, max_side=8192, min_side=1)
    info, violations = inspect(data, what, limits)
    if violations:
        return None, f"{what}: {violations[0].description}"
    return info, None


def image_field(value: Any) -> bytes | None:
    """Bytes of an image sent inline as base64 or a data: URI (the emulators never fetch URLs)."""
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("data:"):
        return from_data_uri(value)
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def edited_image(source: bytes, width: int, height: int, fmt: OutputFormat, seed: int) -> bytes:
    """A result that visibly derives from `source`: it resized, blended with a seeded render."""
    with Image.open(io.BytesIO(source)) as src:
        base = src.convert("RGB").resize((width, height))
    with Image.open(io.BytesIO(render_image(width, height, OutputFormat.PNG, seed))) as art:
        blended = Image.blend(base, art.convert("RGB"), 0.35)
    return encode(blended, fmt)
