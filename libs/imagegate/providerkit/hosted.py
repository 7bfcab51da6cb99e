"""HostedAdapter: the Adapter properties every hosted provider takes from its ProviderSettings."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

import httpx

from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.settings import ProviderSettings

SettingsT = TypeVar("SettingsT", bound=ProviderSettings)


class HostedAdapter(Adapter, Generic[SettingsT]):
    """An Adapter whose key, base URL, timeout and concurrency limit come from its settings."""

    _client: httpx.AsyncClient
    """The adapter's one pooled HTTP client (built by the subclass with `build_client`)."""

    def __init__(self, settings: SettingsT) -> None:
        self._settings = settings
        # Fire-and-forget provider calls (e.g. cancelling a job after the deadline) finish before
        # the client closes.
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    @property
    def base_url(self) -> str:
        return self._settings.effective_base_url

    @property
    def max_concurrency(self) -> int:
        return self._settings.max_concurrency

    @property
    def default_timeout(self) -> float:
        return self._settings.timeout_seconds

    async def aclose(self) -> None:
        """Lets background calls finish (5 s at most), then closes the HTTP client."""
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        await self._client.aclose()
