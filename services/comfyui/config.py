"""Settings of the ComfyUI adapter process (IMAGEGATE_COMFYUI_*)."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import Field, SecretStr, field_validator

from imagegate.providerkit.download import is_loopback_host
from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class ComfyUISettings(ProviderSettings):
    """IMAGEGATE_COMFYUI_BASE_URL (turns it on), _TOKEN, _WORKFLOWS, _ADDR, _TIMEOUT_SECONDS, ..."""

    model_config = provider_config("COMFYUI")

    key: SecretStr | None = key_field("IMAGEGATE_COMFYUI_TOKEN")
    addr: str = Field("127.0.0.1:50068", description="Listen address.")
    workflows: Path | None = Field(
        None, description="Workflow templates per model (default: the bundled workflows.yaml)."
    )
    timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline applied when a caller sets none."
    )
    # One ComfyUI server runs one prompt at a time: one running and one waiting, and the next
    # call is refused at once so the Router overflows instead of queueing past its deadline.
    max_concurrency: int = Field(2, ge=1, description="Most generations in flight at once.")
    poll_interval_seconds: float = Field(0.1, gt=0, description="First delay between polls.")
    max_poll_interval_seconds: float = Field(1.0, gt=0, description="Longest delay between polls.")
    progress_socket: bool = Field(
        True, description="Follow /ws for per-step progress on streamed calls."
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        """A team's server: https, or plain http (its own network); never credentials."""
        value = value.strip().rstrip("/")
        if not value:
            return value
        url = httpx.URL(value)
        if url.userinfo or url.query:
            raise ValueError("base URL must not carry credentials or a query string")
        if url.scheme not in ("http", "https"):
            raise ValueError("base URL must be http or https")
        return value

    @property
    def enabled(self) -> bool:
        """On when the server's URL is set (the token is optional)."""
        return bool(self.base_url)

    @property
    def is_loopback_override(self) -> bool:
        return bool(self.base_url) and is_loopback_host(httpx.URL(self.base_url).host)

    def check_token_transport(self) -> None:
        """Refuses sending a token in clear to another machine."""
        if (
            self.key_value()
            and httpx.URL(self.base_url).scheme == "http"
            and not self.is_loopback_override
        ):
            raise ValueError("IMAGEGATE_COMFYUI_TOKEN needs an https base URL (or a loopback one)")
