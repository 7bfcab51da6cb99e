"""Settings of the diffusers adapter process (IMAGEGATE_DIFFUSERS_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.diffusers.profiles import PROFILES


class DiffusersSettings(BaseSettings):
    """Where the weights are, what model they are, and how the one device is shared."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGATE_DIFFUSERS_", extra="ignore", frozen=True, protected_namespaces=()
    )

    model_path: Path | None = Field(
        None,
        description="Local directory in diffusers format (model_index.json); the adapter is off "
        "without it and never downloads.",
    )
    model_id: str = Field(
        "stabilityai/stable-diffusion-2-1",
        description=f"Which open model the weights are (one of: {', '.join(PROFILES)}).",
    )
    addr: str = Field("127.0.0.1:50067", description="Listen address.")
    device: str = Field(
        "auto", description="'auto' (cuda when present, else cpu), 'cuda:N', 'cpu'."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; 'auto' is float16 on CUDA and float32 on CPU."
    )
    max_queue: int = Field(
        4,
        ge=0,
        description="Requests allowed to wait behind the running one; beyond it the adapter "
        "answers RESOURCE_EXHAUSTED at once so the Router overflows to another provider.",
    )
    max_steps: int = Field(
        0, ge=0, description="Largest steps value accepted; 0 keeps the model profile's limit."
    )
    timeout_seconds: float = Field(
        300.0, gt=0, description="Deadline applied when a caller sets none."
    )
    retry_after_seconds: float = Field(
        2.0, gt=0, description="RetryInfo sent with a queue-full refusal."
    )

    @property
    def enabled(self) -> bool:
        """Whether a model directory is configured."""
        return self.model_path is not None and str(self.model_path).strip() != ""
