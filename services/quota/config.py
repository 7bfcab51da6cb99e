"""Settings of the Quota service, read once from the environment in main()."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class QuotaSettings(BaseSettings):
    """Quota service settings (IMAGEGATE_QUOTA_* plus QUOTA_DATABASE_URL)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    addr: str = Field("127.0.0.1:50052", alias="IMAGEGATE_QUOTA_ADDR")
    data_dir: Path = Field(Path(".imagegate"), alias="IMAGEGATE_DATA_DIR")
    database_url: str = Field(
        "", alias="QUOTA_DATABASE_URL", description="Empty: SQLite file <data_dir>/quota.db."
    )
    database_schema: str = Field(
        "quota", alias="QUOTA_DATABASE_SCHEMA", description="PostgreSQL schema of our tables."
    )
    admin_token: str = Field("", alias="IMAGEGATE_ADMIN_TOKEN")
    key_pepper: str = Field(
        "", alias="IMAGEGATE_QUOTA_KEY_PEPPER", description="HMAC key for API key hashes."
    )
    lease_seconds: float = Field(300.0, alias="IMAGEGATE_QUOTA_LEASE_SECONDS", gt=0)
    max_lease_seconds: float = Field(3600.0, alias="IMAGEGATE_QUOTA_MAX_LEASE_SECONDS", gt=0)
    sweep_interval_seconds: float = Field(5.0, alias="IMAGEGATE_QUOTA_SWEEP_SECONDS", gt=0)
    trace_sql: bool | None = Field(
        None,
        alias="IMAGEGATE_QUOTA_TRACE_SQL",
        description="A span per SQL statement; unset: only when spans are exported.",
    )
    db_threads: int = Field(
        16, alias="IMAGEGATE_QUOTA_DB_THREADS", ge=1, description="PostgreSQL worker threads."
    )

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'quota.db').resolve()}"
