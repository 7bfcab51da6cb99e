"""HostedAdapter: the Adapter properties every hosted provider takes from its ProviderSettings."""

from __future__ import annotations

from typing import Generic, TypeVar

from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.settings import ProviderSettings

SettingsT = TypeVar("SettingsT", bound=ProviderSettings)


class HostedAdapter(Adapter, Generic[SettingsT]):
    """An Adapter whose key, base URL, timeout and concurrency limit come from its settings."""

    def __init__(self, settings: SettingsT) -> None:
        self._settings = settings

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
