"""HostedAdapter: the Adapter properties every hosted provider takes from its ProviderSettings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.download import ResultSource, check_api_url
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import build_client
from imagegate.providerkit.settings import ProviderSettings
from imagegate.telemetry import Telemetry

SettingsT = TypeVar("SettingsT", bound=ProviderSettings)


class HostedAdapter(Adapter, Generic[SettingsT]):
    """An Adapter whose key, base URL, timeout and concurrency limit come from its settings."""

    def __init__(
        self,
        settings: SettingsT,
        *,
        headers: dict[str, str],
        max_connections: int,
        telemetry: Telemetry | None,
        base_url: str | None = None,
    ) -> None:
        """Builds the adapter's one pooled HTTP client, sending `headers` (the credentials).

        `base_url` overrides the settings' effective base URL (e.g. without a /v1 suffix).
        """
        self._settings = settings
        self._base_url = settings.effective_base_url if base_url is None else base_url
        self._client = build_client(
            base_url=self._base_url,
            headers=headers,
            max_connections=max_connections,
            telemetry=telemetry,
        )
        # Fire-and-forget provider calls (e.g. cancelling a job after the deadline) finish before
        # the client closes.
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    @property
    def base_url(self) -> str:
        return self._base_url

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

    def _job_url(self, url: object, job_id: str, *, hosts: Sequence[str]) -> str:
        """A job URL from the provider's answer (status, poll, cancel), checked before our key
        is sent there; a refusal is billable because the job was already accepted."""
        try:
            return check_api_url(
                url,
                base_url=self._settings.effective_base_url,
                allowed_hosts=hosts,
                loopback_ok=self._settings.is_loopback_override,
            )
        except ProviderError as err:
            err.billable, err.provider_job_id = True, job_id
            raise

    def _results_from(self, hosts: Sequence[str]) -> ResultSource:
        """Where this adapter's result images may come from: `hosts`, within its settings."""
        return ResultSource(
            hosts=hosts,
            loopback_ok=self._settings.is_loopback_override,
            max_bytes=self._settings.max_image_bytes,
        )
