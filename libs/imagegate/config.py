"""Settings shared by every service; each service subclasses it with its own fields."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.grpckit.loop import EventLoop


class CommonSettings(BaseSettings):
    """Fields every service reads. Built once in `main()` and passed down."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".imagegate"), description="Where embedded databases live.")
    log_level: str = Field("INFO", description="Python log level.")
    log_format: str = Field("json", description="'json' (one object per line) or 'text'.")
    shutdown_grace_seconds: float = Field(5.0, description="Drain time on SIGTERM.")
    event_loop: EventLoop = Field(
        "uvloop",
        description="'uvloop' (less CPU per request) or 'asyncio' (the standard loop); "
        "every service reads it.",
    )
    max_input_image_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Largest caller input image (image-to-image, mask, reference) an adapter "
        "accepts; the Router reads the same variable (docs/edits.md).",
    )
