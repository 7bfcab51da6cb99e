"""Settings of the local adapter process."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LocalSettings(BaseSettings):
    """IMAGEGATE_LOCAL_* variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_LOCAL_", extra="ignore", frozen=True)

    addr: str = Field("127.0.0.1:50060", description="Listen address.")
    latency_ms: float = Field(
        0.0, description="Simulated provider latency per call (demos and benchmarks)."
    )
    max_concurrency: int = Field(256, description="Most renders in flight at once.")
