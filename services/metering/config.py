"""Settings of the Metering service, read once from the environment in main()."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MeteringSettings(BaseSettings):
    """Metering service settings (IMAGEGATE_METERING_* plus METERING_DATABASE_URL)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    addr: str = Field("127.0.0.1:50053", alias="IMAGEGATE_METERING_ADDR")
    data_dir: Path = Field(Path(".imagegate"), alias="IMAGEGATE_DATA_DIR")
    database_url: str = Field(
        "", alias="METERING_DATABASE_URL", description="Empty: SQLite file <data_dir>/metering.db."
    )
    database_schema: str = Field(
        "metering", alias="METERING_DATABASE_SCHEMA", description="PostgreSQL schema."
    )
    prices_path: Path | None = Field(
        None, alias="IMAGEGATE_METERING_PRICES", description="Catalog YAML; default: packaged."
    )
    admin_token: str = Field(
        "", alias="IMAGEGATE_ADMIN_TOKEN", description="Guards the margin report; empty refuses it."
    )
    plans_path: Path | None = Field(
        None,
        alias="IMAGEGATE_PLANS",
        description="Plans catalog YAML pricing the margin report; default: Quota's packaged one.",
    )
    db_threads: int = Field(16, alias="IMAGEGATE_METERING_DB_THREADS", ge=1)
    trace_sql: bool | None = Field(
        None,
        alias="IMAGEGATE_METERING_TRACE_SQL",
        description="A span per SQL statement; unset: only when spans are exported.",
    )

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metering.db').resolve()}"
