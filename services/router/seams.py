"""Thin seams over imagegate.pricing and imagegate.settlement, with stand-ins until they land."""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

log = logging.getLogger(__name__)


class Pricer(Protocol):
    """Prices generations locally from a mirror of Metering's catalog."""

    def quote(
        self,
        provider: str,
        provider_model: str,
        *,
        width: int,
        height: int,
        num_images: int,
        steps: int | None,
    ) -> int | None:
        """Expected price in micro-USD, or None when the catalog has no entry."""

    def usage_cost(self, provider: str, provider_model: str, usage: image_pb2.Usage) -> int | None:
        """Price of measured usage in micro-USD, or None when the catalog has no entry."""

    def unit(self, provider: str, provider_model: str) -> int:
        """The PriceUnit Metering bills the model in; PRICE_UNIT_UNSPECIFIED when unpriced."""


def _quote_fallback(price: metering_pb2.Price, width: int, height: int, n: int) -> int:
    mp = width * height / 1e6
    unit = price.unit
    if unit == catalog_pb2.PRICE_UNIT_MEGAPIXEL:
        return round(price.unit_price_micros * math.ceil(mp) * n)
    if unit == catalog_pb2.PRICE_UNIT_IMAGE:
        return round(price.unit_price_micros * n)
    if unit == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND:
        return round(price.unit_price_micros * price.assumed_seconds_per_image * n)
    if unit == catalog_pb2.PRICE_UNIT_TOKEN:
        return round(price.unit_price_micros * price.assumed_tokens_per_megapixel * mp * n)
    return 0


def _usage_fallback(price: metering_pb2.Price, usage: image_pb2.Usage) -> int:
    unit = price.unit
    if unit == catalog_pb2.PRICE_UNIT_MEGAPIXEL:
        per_image = usage.megapixels / max(1, usage.images)
        return round(price.unit_price_micros * math.ceil(per_image - 1e-9) * usage.images)
    if unit == catalog_pb2.PRICE_UNIT_IMAGE:
        return round(price.unit_price_micros * usage.images)
    if unit == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND:
        secs = usage.provider_seconds or price.assumed_seconds_per_image * usage.images
        return round(price.unit_price_micros * secs)
    if unit == catalog_pb2.PRICE_UNIT_TOKEN:
        out = usage.output_tokens or price.assumed_tokens_per_megapixel * usage.megapixels
        return round(
            price.unit_price_micros * out + price.input_token_price_micros * usage.input_tokens
        )
    return 0


class PriceMirror:
    """Implements Pricer with imagegate.pricing when present, else a stand-in of the same rules."""

    def __init__(self, prices: list[metering_pb2.Price] | None = None) -> None:
        self._lib: Any = None
        try:
            self._lib = importlib.import_module("imagegate.pricing")
        except ImportError:
            self._lib = None
        self.version = ""
        self._book: Any = None
        self._by_key: dict[tuple[str, str], metering_pb2.Price] = {}
        self.replace(list(prices or []), version="")

    @property
    def size(self) -> int:
        """Entries mirrored."""
        return len(self._by_key)

    def replace(self, prices: list[metering_pb2.Price], *, version: str) -> None:
        """Swaps in a fresh copy of the catalog."""
        self._by_key = {(p.provider, p.provider_model): p for p in prices}
        self._book = self._lib.PriceBook(prices) if self._lib is not None else None
        self.version = version

    def _find(self, provider: str, provider_model: str) -> metering_pb2.Price | None:
        if self._book is not None:
            found: metering_pb2.Price | None = self._book.find(provider, provider_model)
            return found
        return self._by_key.get((provider, provider_model))

    def quote(
        self,
        provider: str,
        provider_model: str,
        *,
        width: int,
        height: int,
        num_images: int,
        steps: int | None,
    ) -> int | None:
        price = self._find(provider, provider_model)
        if price is None:
            return None
        if self._lib is not None:
            return int(
                self._lib.quote_micros(
                    price, width=width, height=height, num_images=num_images, steps=steps
                )
            )
        return _quote_fallback(price, width, height, num_images)

    def unit(self, provider: str, provider_model: str) -> int:
        price = self._find(provider, provider_model)
        return catalog_pb2.PRICE_UNIT_UNSPECIFIED if price is None else price.unit

    def usage_cost(self, provider: str, provider_model: str, usage: image_pb2.Usage) -> int | None:
        price = self._find(provider, provider_model)
        if price is None:
            return None
        if self._lib is not None:
            return int(self._lib.usage_micros(price, usage))
        return _usage_fallback(price, usage)


@dataclass
class SettlementOrder:
    """What to settle: commit (or release when None) and the usage record (or none)."""

    reservation_id: str
    commit: quota_pb2.CommitReservationRequest | None
    record: metering_pb2.RecordUsageRequest | None


class SettlerLike(Protocol):
    """The part of imagegate.settlement.Settler the Router uses."""

    async def start(self) -> None: ...

    async def settle(
        self, order: SettlementOrder, *, timeout: float
    ) -> metering_pb2.UsageRecord | None: ...

    async def settle_in_background(
        self, order: SettlementOrder, *, key: str, timeout: float
    ) -> None: ...

    async def wait_settled(self, key: str, timeout: float) -> bool: ...

    def pending(self) -> int: ...

    async def close(self) -> None: ...


class LibrarySettler:
    """Adapts imagegate.settlement.Settler (durable outbox) to SettlerLike."""

    def __init__(self, module: Any, settler: Any) -> None:
        self._module = module
        self._settler = settler

    async def start(self) -> None:
        await self._settler.start()

    async def settle(
        self, order: SettlementOrder, *, timeout: float
    ) -> metering_pb2.UsageRecord | None:
        s = self._module.Settlement(order.reservation_id, order.commit, order.record)
        result: metering_pb2.UsageRecord | None = await self._settler.settle(s, timeout=timeout)
        return result

    async def settle_in_background(
        self, order: SettlementOrder, *, key: str, timeout: float
    ) -> None:
        s = self._module.Settlement(order.reservation_id, order.commit, order.record)
        await self._settler.settle_in_background(s, key=key, timeout=timeout)

    async def wait_settled(self, key: str, timeout: float) -> bool:
        return bool(await self._settler.wait_settled(key, timeout))

    def pending(self) -> int:
        return int(self._settler.pending())

    async def close(self) -> None:
        await self._settler.close()


class DirectSettler:
    """Stand-in until imagegate.settlement lands: commit/release and record concurrently, no outbox."""

    def __init__(
        self,
        quota: quota_pb2_grpc.QuotaServiceStub,
        metering: metering_pb2_grpc.MeteringServiceStub,
    ) -> None:
        self._quota = quota
        self._metering = metering
        self._failed = 0
        self._tasks: dict[str, set[asyncio.Task[Any]]] = {}

    async def start(self) -> None:
        return None

    async def settle(
        self, order: SettlementOrder, *, timeout: float
    ) -> metering_pb2.UsageRecord | None:
        async def quota_side() -> None:
            if not order.reservation_id:
                return
            if order.commit is not None:
                await self._quota.CommitReservation(order.commit, timeout=timeout)
            else:
                await self._quota.ReleaseReservation(
                    quota_pb2.ReleaseReservationRequest(reservation_id=order.reservation_id),
                    timeout=timeout,
                )

        async def metering_side() -> metering_pb2.UsageRecord | None:
            if order.record is None:
                return None
            resp = await self._metering.RecordUsage(order.record, timeout=timeout)
            return resp.record

        results = await asyncio.gather(quota_side(), metering_side(), return_exceptions=True)
        record: metering_pb2.UsageRecord | None = None
        for r in results:
            if isinstance(r, BaseException):
                self._failed += 1
                log.warning("settlement step failed (no outbox yet): %s", r)
            elif isinstance(r, metering_pb2.UsageRecord):
                record = r
        return record

    async def settle_in_background(
        self, order: SettlementOrder, *, key: str, timeout: float
    ) -> None:
        task = asyncio.create_task(self.settle(order, timeout=timeout))
        tasks = self._tasks.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def wait_settled(self, key: str, timeout: float) -> bool:
        tasks = self._tasks.get(key)
        if not tasks:
            return True
        _, left = await asyncio.wait(set(tasks), timeout=timeout)
        return not left

    def pending(self) -> int:
        return self._failed

    async def close(self) -> None:
        return None


def make_settler(
    quota: quota_pb2_grpc.QuotaServiceStub,
    metering: metering_pb2_grpc.MeteringServiceStub,
    outbox_path: Path,
) -> SettlerLike:
    """The durable library settler when installed, else the direct stand-in."""
    try:
        module = importlib.import_module("imagegate.settlement")
    except ImportError:
        return DirectSettler(quota, metering)
    outbox_path.parent.mkdir(parents=True, exist_ok=True)
    settler = module.Settler(
        quota=quota, metering=metering, outbox_path=outbox_path, retry_interval=1.0
    )
    return LibrarySettler(module, settler)
