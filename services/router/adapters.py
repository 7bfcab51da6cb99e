"""The adapters the Router dials: one long-lived channel each, DescribeProvider kept fresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from imagegate.grpckit.channel import create_channel
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc

log = logging.getLogger(__name__)


class Gate:
    """The adapter's concurrency limit, applied in the Router so bursts queue instead of failing.

    The limit follows DescribeProvider's max_concurrency; 0 means unlimited. Waiters are served
    in arrival order.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Calls queued for a slot."""
        return len(self._waiters)

    async def acquire(self, timeout: float) -> bool:
        """Takes a slot, waiting at most `timeout` seconds; False when none came free."""
        if (not self.limit or self.in_flight < self.limit) and not self._waiters:
            self.in_flight += 1
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, timeout))
        except TimeoutError:
            if future.done() and not future.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            else:
                future.cancel()
            return False
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()
            else:
                future.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)
        return True

    def release(self) -> None:
        """Frees a slot, handing it straight to the oldest live waiter."""
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.in_flight = max(0, self.in_flight - 1)


@dataclass
class AdapterInfo:
    """One adapter as last described."""

    name: str
    """Provider name from IMAGEGATE_ROUTER_ADAPTERS."""
    target: str
    """host:port."""
    channel: grpc.aio.Channel
    """Long-lived channel."""
    stub: provider_pb2_grpc.ProviderServiceStub
    """Stub on the channel."""
    described: bool = False
    """Whether DescribeProvider ever answered."""
    enabled: bool = False
    """Whether the adapter has credentials (last answer)."""
    models: dict[str, provider_pb2.ProviderModel] = field(default_factory=dict)
    """Models it serves, by provider model id."""
    max_concurrency: int = 0
    """Its concurrency limit."""
    last_error: str = ""
    """Why the last DescribeProvider failed."""
    gate: Gate = field(default_factory=Gate)
    """Concurrency gate sized from max_concurrency."""


class AdapterPool:
    """Dials every adapter once and refreshes their descriptions in the background."""

    def __init__(
        self,
        targets: dict[str, str],
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        wrap_stub: Callable[
            [provider_pb2_grpc.ProviderServiceStub], provider_pb2_grpc.ProviderServiceStub
        ] = lambda stub: stub,
        describe_interval: float,
        local_provider: str,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._interval = describe_interval
        self.local_provider = local_provider
        self._adapters: dict[str, AdapterInfo] = {}
        for name, target in targets.items():
            channel = create_channel(target, interceptors, credentials=credentials)
            self._adapters[name] = AdapterInfo(
                name=name,
                target=target,
                channel=channel,
                stub=wrap_stub(provider_pb2_grpc.ProviderServiceStub(channel)),
            )
        self._task: asyncio.Task[None] | None = None

    def get(self, name: str) -> AdapterInfo | None:
        """The adapter for a provider, if dialled."""
        return self._adapters.get(name)

    def all(self) -> list[AdapterInfo]:
        """Every adapter, in configuration order."""
        return list(self._adapters.values())

    def hosted_enabled(self) -> bool:
        """Whether any hosted (non-local) provider is enabled."""
        return any(a.enabled for a in self._adapters.values() if a.name != self.local_provider)

    async def start(self, *, wait: float = 2.0) -> None:
        """Describes every adapter once (bounded by `wait`), then keeps refreshing."""
        await self.refresh(timeout=wait)
        self._task = asyncio.create_task(self._loop(), name="router-describe")

    async def refresh(self, *, timeout: float = 2.0) -> None:
        """Calls DescribeProvider on every adapter concurrently."""
        await asyncio.gather(*(self._describe(a, timeout) for a in self._adapters.values()))

    async def _describe(self, a: AdapterInfo, timeout: float) -> None:
        try:
            resp = await a.stub.DescribeProvider(
                provider_pb2.DescribeProviderRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            a.last_error = f"{err.code().name}: {err.details()}"
            if not a.described:
                log.warning(
                    "adapter %s at %s not reachable yet: %s", a.name, a.target, a.last_error
                )
            return
        if resp.provider and resp.provider != a.name:
            log.warning(
                "adapter at %s calls itself %r, configured as %r", a.target, resp.provider, a.name
            )
        changed = not a.described or a.enabled != resp.enabled
        a.described = True
        a.enabled = resp.enabled
        a.models = {m.id: m for m in resp.models}
        a.max_concurrency = resp.max_concurrency
        a.gate.limit = max(0, resp.max_concurrency)
        a.last_error = ""
        if changed:
            log.info(
                "adapter described",
                extra={"provider": a.name, "enabled": a.enabled, "models": len(a.models)},
            )

    async def _loop(self) -> None:
        while True:
            # Adapters not yet reachable are retried quickly so a late start is noticed.
            pending = any(not a.described for a in self._adapters.values())
            await asyncio.sleep(min(self._interval, 1.0) if pending else self._interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("adapter refresh failed")

    async def close(self) -> None:
        """Stops refreshing and closes every channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(a.channel.close() for a in self._adapters.values()))
