"""ProviderSettings: the settings every hosted-provider adapter reads, subclassed per provider."""

from __future__ import annotations

from typing import ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.providerkit.download import is_loopback_host


class ProviderSettings(BaseSettings):
    """Key, base URL override, listen address, timeout and concurrency of one adapter.

    A subclass sets `model_config` with its `IMAGEGATE_<P>_` prefix, `DEFAULT_BASE_URL`, the
    `addr` default and the key's variable name, e.g.::

        class FalSettings(ProviderSettings):
            model_config = provider_config("FAL")
            DEFAULT_BASE_URL: ClassVar[str] = "https://queue.fal.run"
            key: SecretStr | None = key_field("FAL_KEY")
            addr: str = Field("127.0.0.1:50061", description="Listen address.")

    The key is a SecretStr: it never appears in repr, logs, spans or error messages.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    DEFAULT_BASE_URL: ClassVar[str] = ""
    """The provider's public base URL."""

    key: SecretStr | None = Field(
        None, description="Provider API key; the adapter is off without it."
    )
    base_url: str = Field("", description="Base URL override (plain http only on loopback).")
    addr: str = Field("127.0.0.1:0", description="Listen address of the adapter process.")
    timeout_seconds: float = Field(
        120.0, gt=0, description="Deadline applied when a caller sets none."
    )
    max_concurrency: int = Field(256, ge=1, description="Most generations in flight at once.")
    max_image_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest result image accepted."
    )
    poll_interval_seconds: float = Field(
        0.5, gt=0, description="First delay between status polls (grows to max_poll_interval)."
    )
    max_poll_interval_seconds: float = Field(2.0, gt=0, description="Longest delay between polls.")

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return value
        url = httpx.URL(value)
        if url.userinfo or url.query:
            raise ValueError("base URL must not carry credentials or a query string")
        if url.scheme == "https":
            return value
        if url.scheme == "http" and is_loopback_host(url.host):
            return value
        raise ValueError("base URL must be https (plain http only for a loopback override)")

    @property
    def enabled(self) -> bool:
        """Whether a non-empty key is configured."""
        return self.key is not None and bool(self.key.get_secret_value().strip())

    @property
    def effective_base_url(self) -> str:
        """The override when set, else the provider's public base URL."""
        return self.base_url or self.DEFAULT_BASE_URL

    @property
    def is_loopback_override(self) -> bool:
        """Whether the base URL is an override pointing at this machine (emulators)."""
        return bool(self.base_url) and is_loopback_host(httpx.URL(self.base_url).host)

    def key_value(self) -> str:
        """The key in clear, for the one header that needs it; empty when disabled."""
        return self.key.get_secret_value().strip() if self.key is not None else ""


def provider_config(prefix: str) -> SettingsConfigDict:
    """`model_config` for a subclass: IMAGEGATE_<prefix>_* variables, frozen, extras ignored."""
    return SettingsConfigDict(
        env_prefix=f"IMAGEGATE_{prefix}_", extra="ignore", frozen=True, populate_by_name=True
    )


def key_field(env_name: str) -> SecretStr | None:
    """The `key` field read from the provider's own variable (FAL_KEY, BFL_API_KEY, ...)."""
    return Field(  # type: ignore[no-any-return]
        None,
        validation_alias=env_name,
        description=f"Provider API key from {env_name}; the adapter is off without it.",
    )
