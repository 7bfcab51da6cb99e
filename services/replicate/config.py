"""Settings of the Replicate adapter process (REPLICATE_API_TOKEN, IMAGEGATE_REPLICATE_*)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class ReplicateSettings(ProviderSettings):
    """REPLICATE_API_TOKEN plus IMAGEGATE_REPLICATE_BASE_URL / _ADDR / _MAX_CONCURRENCY / ..."""

    model_config = provider_config("REPLICATE")
    DEFAULT_BASE_URL: ClassVar[str] = "https://api.replicate.com"

    key: SecretStr | None = key_field("REPLICATE_API_TOKEN")
    addr: str = Field("127.0.0.1:50063", description="Listen address.")
    # Replicate limits creates (600/min), not running predictions: at 600/min and 2-30 s per
    # prediction up to ~300 are running at once.
    max_concurrency: int = Field(256, ge=1, description="Most generations in flight at once.")
    sdxl_version: str = Field(
        "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
        description="Version id of stability-ai/sdxl (not an official model: runs by version).",
    )
    result_hosts: tuple[str, ...] = Field(
        (".replicate.delivery",), description="Hosts result images may be downloaded from."
    )
    api_hosts: tuple[str, ...] = Field(
        ("api.replicate.com",), description="Hosts urls.get / urls.cancel may point at."
    )
