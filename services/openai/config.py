"""Settings of the OpenAI Images adapter process."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class OpenAISettings(ProviderSettings):
    """OPENAI_API_KEY plus IMAGEGATE_OPENAI_* variables."""

    model_config = provider_config("OPENAI")
    DEFAULT_BASE_URL: ClassVar[str] = "https://api.openai.com"

    key: SecretStr | None = key_field("OPENAI_API_KEY")
    addr: str = Field("127.0.0.1:50065", description="Listen address.")
    # Complex prompts can take about two minutes on GPT image models.
    timeout_seconds: float = Field(180.0, gt=0, description="Deadline when a caller sets none.")
    # OpenAI limits images per minute (up to 250 IPM at tier 5), not calls in flight, and a call
    # takes 10-120 s: at the limit ~250 calls are open at once. Over the limit it answers 429.
    max_concurrency: int = Field(
        256, ge=1, description="Most generations in flight (OpenAI limits images per minute)."
    )
    quality: Literal["auto", "low", "medium", "high"] = Field(
        "auto",
        description="Default GPT image quality when a request names none; it sets the output "
        "token count and so the price.",
    )
    moderation: Literal["auto", "low"] = Field("auto", description="GPT image moderation level.")
    organization: str = Field("", description="OpenAI-Organization header, when set.")
    project: str = Field("", description="OpenAI-Project header, when set.")
