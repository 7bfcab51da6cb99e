"""Admission: validate the request, resolve the caller's API key, and map Quota's auth errors."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.auth import require_bearer
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError, from_parsed, parse_rpc_error
from imagegate.grpckit.replied import Replied
from imagegate.inputs.checks import InputLimits
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2
from services.router.catalog import Catalog
from services.router.validation import Normalized, normalize

DOMAIN = "imagegate.router"
# Most resolved keys remembered; the oldest are dropped first.
AUTH_CACHE_ENTRIES = 100_000


@dataclass(frozen=True)
class Caller:
    """An authenticated caller."""

    tenant_id: str
    """Tenant id (safe to log)."""
    plan: quota_pb2.Plan
    """The tenant's plan."""
    key_id: str = ""
    """Public id of the key."""


@dataclass(frozen=True)
class Admitted:
    """A valid GenerateImage request and who sent it; nothing is held for it yet."""

    norm: Normalized
    """The validated request with style and defaults applied."""
    api_key: str
    """The caller's key (never logged)."""
    request_id: str
    """The caller's request_id, or one the Router made up."""
    dedupe: bool
    """Whether the caller sent the request_id (only then are repeats deduplicated)."""
    deadline: Deadline
    """The caller's deadline, or the default one."""
    caller: Caller
    """The authenticated tenant and plan."""
    replied: Replied = field(default_factory=Replied.already)
    """Set once the RPC has answered: work after the answer waits for it."""


def quota_error(err: grpc.RpcError) -> ImagegateError:
    """Quota's error as the caller should see it: an outage becomes a retryable dependency error."""
    parsed = parse_rpc_error(err)
    if parsed.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and (
        not parsed.reason or parsed.reason == reasons.DEPENDENCY_UNAVAILABLE
    ):
        return ImagegateError(
            grpc.StatusCode.UNAVAILABLE,
            reasons.DEPENDENCY_UNAVAILABLE,
            "the quota service is unreachable; retry shortly",
            domain=DOMAIN,
            metadata={"dependency": "quota", "code": parsed.code.name},
            retry_after_seconds=1.0,
        )
    return from_parsed(parsed)


class Authenticator:
    """Resolves API keys with Quota and remembers them briefly (keys are cached hashed)."""

    def __init__(
        self,
        quota: quota_pb2_grpc.QuotaServiceStub,
        *,
        cache_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        input_limits: InputLimits | None = None,
    ) -> None:
        self._quota = quota
        self._input_limits = input_limits or InputLimits()
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    def remember(self, api_key: str, caller: Caller) -> None:
        """Caches a resolved key for the configured time."""
        h = _key_hash(api_key)
        self._cache[h] = (caller, self._clock() + self._cache_seconds)
        self._cache.move_to_end(h)
        while len(self._cache) > AUTH_CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def cached(self, api_key: str) -> Caller | None:
        """The caller behind a key resolved recently, or None."""
        hit = self._cache.get(_key_hash(api_key))
        if hit is None or hit[1] < self._clock():
            return None
        return hit[0]

    async def resolve(self, api_key: str, timeout: float) -> Caller:
        """The caller behind a key: from the cache, else from Quota (raises on a bad key)."""
        cached = self.cached(api_key)
        if cached is not None:
            return cached
        try:
            resp = await self._quota.AuthenticateApiKey(
                quota_pb2.AuthenticateApiKeyRequest(api_key=api_key), timeout=max(0.001, timeout)
            )
        except grpc.aio.AioRpcError as err:
            raise quota_error(err) from None
        caller = Caller(resp.tenant.id, resp.plan, resp.key_id)
        self.remember(api_key, caller)
        return caller

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of a read RPC; always asks Quota so a revoked key is refused at once."""
        api_key = require_bearer(context, domain=DOMAIN)
        remaining = context.time_remaining()
        timeout = self._timeout if remaining is None else min(self._timeout, remaining)
        self._cache.pop(_key_hash(api_key), None)
        return await self.resolve(api_key, timeout)

    async def admit(
        self,
        request: router_pb2.GenerateImageRequest,
        context: grpc.aio.ServicerContext,
        catalog: Catalog,
        default_deadline: float,
    ) -> Admitted:
        """Validates a GenerateImage request, then resolves its key (cached between requests).

        A cached key is re-checked by Quota when the request reserves, so a revoked key never
        generates; the cache only saves a round trip on requests refused before that.
        """
        api_key = require_bearer(context, domain=DOMAIN)
        deadline = Deadline.from_context(context, default_deadline)
        if request.mask or request.mask_from_alpha:
            # Normalizing a mask decodes it (up to 10 MiB): off the event loop.
            norm = await asyncio.to_thread(normalize, request, catalog, self._input_limits)
        else:
            norm = normalize(request, catalog, self._input_limits)
        request_id = request.request_id or f"rtr-{uuid.uuid4().hex}"
        norm.template.request_id = request_id
        caller = await self.resolve(api_key, min(self._timeout, deadline.remaining()))
        return Admitted(
            norm=norm,
            api_key=api_key,
            request_id=request_id,
            dedupe=bool(request.request_id),
            deadline=deadline,
            caller=caller,
            replied=Replied.of(context),
        )


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()
