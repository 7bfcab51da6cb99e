"""Settings of the fal adapter process (FAL_KEY, IMAGEGATE_FAL_*)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class FalSettings(ProviderSettings):
    """FAL_KEY plus IMAGEGATE_FAL_BASE_URL / _ADDR / _TIMEOUT_SECONDS / _MAX_CONCURRENCY / ..."""

    model_config = provider_config("FAL")
    DEFAULT_BASE_URL: ClassVar[str] = "https://queue.fal.run"

    key: SecretStr | None = key_field("FAL_KEY")
    addr: str = Field("127.0.0.1:50061", description="Listen address.")
    # fal queues above the account's concurrency (2 to 40) instead of rejecting, so the limit
    # here bounds only our own waiting calls (one poll loop each), not what fal runs.
    max_concurrency: int = Field(256, ge=1, description="Most generations in flight at once.")
    poll_interval_seconds: float = Field(0.25, gt=0, description="First delay between polls.")
    result_hosts: tuple[str, ...] = Field(
        (".fal.media",), description="Hosts result images may be downloaded from."
    )
    api_hosts: tuple[str, ...] = Field(
        (".fal.run",), description="Hosts the status/result/cancel URLs may point at."
    )
