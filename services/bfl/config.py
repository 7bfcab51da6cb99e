"""Settings of the BFL adapter process (BFL_API_KEY, IMAGEGATE_BFL_*)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config

REGION_URLS = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}
"""BFL API hosts by region (contracts 4.1); global fails over across clusters."""


class BflSettings(ProviderSettings):
    """BFL_API_KEY plus IMAGEGATE_BFL_REGION / _BASE_URL / _ADDR / _MAX_CONCURRENCY / ..."""

    model_config = provider_config("BFL")
    DEFAULT_BASE_URL: ClassVar[str] = REGION_URLS["global"]

    key: SecretStr | None = key_field("BFL_API_KEY")
    addr: str = Field("127.0.0.1:50064", description="Listen address.")
    region: Literal["global", "eu", "us"] = Field(
        "global", description="API region: global, eu (GDPR) or us; BASE_URL overrides it."
    )
    # BFL allows 24 active tasks per account and answers 429 above it (help.bfl.ai).
    max_concurrency: int = Field(24, ge=1, description="Most generations in flight at once.")
    max_active_tasks: int = Field(
        24, ge=1, description="Most BFL tasks in flight (one per image) across all calls."
    )
    poll_interval_seconds: float = Field(0.5, gt=0, description="First delay between polls.")
    hosts: tuple[str, ...] = Field(
        (".bfl.ai", ".bfl.ml"),
        description="Hosts polling_url and result.sample may point at (regions change).",
    )

    @property
    def effective_base_url(self) -> str:
        """The override when set, else the region's host."""
        return self.base_url or REGION_URLS[self.region]
