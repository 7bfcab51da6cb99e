"""The Router's mirror of Metering's price catalog, priced with imagegate.pricing (one rule set)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import grpc

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.pricing import PriceBook, quote_micros, usage_micros

log = logging.getLogger("services.router")
# Until the first copy arrives the mirror is retried at this pace, then at the configured one.
FIRST_COPY_RETRY_SECONDS = 2.0


class PriceMirror:
    """Prices generations locally from a copy of Metering's catalog."""

    def __init__(self, prices: list[metering_pb2.Price] | None = None) -> None:
        self.version = ""
        self._book = PriceBook(prices or [])

    @property
    def size(self) -> int:
        """Entries mirrored."""
        return len(self._book)

    def replace(self, prices: list[metering_pb2.Price], *, version: str) -> None:
        """Swaps in a fresh copy of the catalog."""
        self._book = PriceBook(prices)
        self.version = version

    def find(
        self, provider: str, provider_model: str, at: datetime | None = None
    ) -> metering_pb2.Price | None:
        """The catalog entry of a provider's model in force at `at` (default: now), or None."""
        return self._book.find(provider, provider_model, at)

    def unit(self, provider: str, provider_model: str) -> int:
        """The PriceUnit Metering bills the model in; PRICE_UNIT_UNSPECIFIED when unpriced."""
        price = self._book.find(provider, provider_model)
        return catalog_pb2.PRICE_UNIT_UNSPECIFIED if price is None else price.unit

    def quote(
        self,
        provider: str,
        provider_model: str,
        *,
        width: int,
        height: int,
        num_images: int,
        steps: int | None,
        quality: str = "",
        input_tokens: int = 0,
    ) -> int | None:
        """Expected price in micro-USD (the worst case of `quality` and `input_tokens`), or None
        when the catalog has no entry."""
        price = self._book.find(provider, provider_model)
        if price is None:
            return None
        return quote_micros(
            price,
            width=width,
            height=height,
            num_images=num_images,
            steps=steps,
            quality=quality,
            input_tokens=input_tokens,
        )

    def usage_cost(
        self,
        provider: str,
        provider_model: str,
        usage: image_pb2.Usage,
        at: datetime | None = None,
    ) -> int | None:
        """Price of measured usage in micro-USD with the entry in force at `at` (default: now),
        or None when the catalog has no entry."""
        price = self._book.find(provider, provider_model, at)
        if price is None:
            return None
        return usage_micros(price, usage)

    async def refresh(
        self, metering: metering_pb2_grpc.MeteringServiceStub, timeout: float
    ) -> bool:
        """Copies Metering's catalog; keeps the old copy when Metering is down."""
        try:
            resp = await metering.ListPrices(metering_pb2.ListPricesRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            log.warning("price catalog not refreshed: %s", err.code().name)
            return False
        self.replace(list(resp.prices), version=resp.catalog_version)
        return True

    async def refresh_forever(
        self, metering: metering_pb2_grpc.MeteringServiceStub, *, every: float, timeout: float
    ) -> None:
        """Refreshes until cancelled: quickly until the first copy arrives, then every `every`."""
        while True:
            await asyncio.sleep(every if self.size else FIRST_COPY_RETRY_SECONDS)
            await self.refresh(metering, timeout)
