"""Settings of the Hugging Face adapter process."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from imagegate.providerkit.settings import ProviderSettings, key_field, provider_config


class HuggingFaceSettings(ProviderSettings):
    """HF_TOKEN plus IMAGEGATE_HF_* variables."""

    model_config = provider_config("HF")
    DEFAULT_BASE_URL: ClassVar[str] = "https://router.huggingface.co"

    key: SecretStr | None = key_field("HF_TOKEN")
    addr: str = Field("127.0.0.1:50062", description="Listen address.")
    # Inference Providers limit requests per period (429 above it), not calls in flight.
    max_concurrency: int = Field(
        256, ge=1, description="Most generations in flight (several HTTP calls each for n > 1)."
    )
    bill_to: str = Field(
        "", description="Organisation billed for the calls (X-HF-Bill-To), when set."
    )
    result_hosts: tuple[str, ...] = Field(
        (".together.ai", ".together.xyz"),
        description="Hosts a partner's result URLs may come from.",
    )
