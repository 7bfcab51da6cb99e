"""Settings of the Together adapter process."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class TogetherSettings(ProviderSettings):
    """TOGETHER_API_KEY plus IMAGEGATE_TOGETHER_* variables."""

    model_config = provider_config("TOGETHER")
    DEFAULT_BASE_URL: ClassVar[str] = "https://api.together.xyz"

    key: SecretStr | None = key_field("TOGETHER_API_KEY")
    addr: str = Field("127.0.0.1:50066", description="Listen address.")
    # Together limits requests per minute (429 above it), not calls in flight.
    max_concurrency: int = Field(
        256, ge=1, description="Most generations in flight (Together limits requests per minute)."
    )
    result_hosts: tuple[str, ...] = Field(
        (".together.ai", ".together.xyz"),
        description="Hosts result URLs may come from, when Together answers with URLs.",
    )
