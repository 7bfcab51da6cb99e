"""Settings of the Hugging Face adapter process."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator

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
        (".together.ai", ".together.xyz", ".fal.media"),
        description="Hosts a partner's result URLs may come from.",
    )
    hub_url: str = Field(
        "https://huggingface.co",
        description="Hub API asked for a model's provider mapping in the account's order (auto).",
    )
    provider_order: str = Field(
        "",
        description="Comma-separated partners for the auto route (e.g. fal-ai,together); empty: "
        "the account's order from the Hub (hf.co/settings/inference-providers).",
    )
    mapping_ttl_seconds: float = Field(
        300.0, ge=0, description="How long the Hub's provider order is reused before asking again."
    )

    @field_validator("hub_url")
    @classmethod
    def _check_hub_url(cls, value: str) -> str:
        return cls._check_base_url(value) if value else value

    def partner_order(self) -> tuple[str, ...]:
        """IMAGEGATE_HF_PROVIDER_ORDER as a tuple (empty: ask the Hub)."""
        return tuple(p.strip() for p in self.provider_order.split(",") if p.strip())
