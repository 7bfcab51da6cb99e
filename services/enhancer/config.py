"""Settings of the PromptEnhancer process (IMAGEGATE_ENHANCER_* plus each provider's key)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.providerkit.download import is_loopback_host
from imagegate.textproviders import TEXT_PROVIDERS


def _key(env_name: str) -> SecretStr | None:
    return Field(  # type: ignore[no-any-return]
        None, validation_alias=env_name, description=f"API key from {env_name}."
    )


@dataclass(frozen=True)
class TextProviderConfig:
    """One provider as configured: where, which model, with which key."""

    name: str
    """Provider name."""
    base_url: str
    """OpenAI-compatible root URL."""
    model: str
    """Model id to call."""
    key: SecretStr | None
    """API key; None when the provider is off."""

    @property
    def enabled(self) -> bool:
        """Whether a non-empty key is configured."""
        return self.key is not None and bool(self.key.get_secret_value().strip())


def _pairs(value: str, setting: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"bad {setting} entry {item!r}: want name=value")
        out[name.strip()] = target.strip()
    return out


def _check_url(url: str) -> str:
    parsed = httpx.URL(url)
    if parsed.userinfo or parsed.query:
        raise ValueError("base URL must not carry credentials or a query string")
    if parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback_host(parsed.host)):
        return url.rstrip("/")
    raise ValueError(f"base URL {url!r} must be https (plain http only on loopback)")


class EnhancerSettings(BaseSettings):
    """Built once in `main()` (or by a test) and passed down; never read from globals."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGATE_ENHANCER_", extra="ignore", frozen=True, populate_by_name=True
    )

    addr: str = Field("127.0.0.1:50070", description="Listen address.")
    order: str = Field(
        "", description='Priority order, "groq,cerebras,..."; default: the built-in order.'
    )
    base_urls: str = Field(
        "", description='Base URL overrides, "groq=https://...,cerebras=http://127.0.0.1:9000/v1".'
    )
    models: str = Field("", description='Model overrides, "groq=llama-3.3-70b-versatile,...".')
    attempt_timeout_seconds: float = Field(
        4.0, gt=0, description="Longest single provider call (also bounded by the deadline)."
    )
    default_deadline_seconds: float = Field(
        8.0, gt=0, description="Budget of a call whose caller set no gRPC deadline."
    )
    max_output_tokens: int = Field(400, ge=16, description="max_tokens sent to the provider.")
    temperature: float = Field(0.4, ge=0, le=2, description="Sampling temperature.")
    cache_ttl_seconds: float = Field(
        3600.0, ge=0, description="How long an identical rewrite is served from the cache."
    )
    cache_max_entries: int = Field(10_000, ge=0, description="Most rewrites cached.")
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failures that open a provider's breaker."
    )
    breaker_open_seconds: float = Field(
        30.0, gt=0, description="How long an open breaker skips its provider (or Retry-After)."
    )
    max_retry_after_seconds: float = Field(
        300.0, gt=0, description="Cap on a provider's Retry-After cool-down."
    )
    groq_key: SecretStr | None = _key("GROQ_API_KEY")
    cerebras_key: SecretStr | None = _key("CEREBRAS_API_KEY")
    sambanova_key: SecretStr | None = _key("SAMBANOVA_API_KEY")
    fireworks_key: SecretStr | None = _key("FIREWORKS_API_KEY")
    nebius_key: SecretStr | None = _key("NEBIUS_API_KEY")
    novita_key: SecretStr | None = _key("NOVITA_API_KEY")
    hyperbolic_key: SecretStr | None = _key("HYPERBOLIC_API_KEY")
    nscale_key: SecretStr | None = _key("NSCALE_API_KEY")
    cohere_key: SecretStr | None = _key("COHERE_API_KEY")
    featherless_key: SecretStr | None = _key("FEATHERLESS_API_KEY")

    def providers(self) -> list[TextProviderConfig]:
        """Every known provider in priority order, with overrides and keys applied."""
        defaults = {p.name: p for p in TEXT_PROVIDERS}
        urls = _pairs(self.base_urls, "IMAGEGATE_ENHANCER_BASE_URLS")
        models = _pairs(self.models, "IMAGEGATE_ENHANCER_MODELS")
        names = [n.strip() for n in self.order.split(",") if n.strip()] or list(defaults)
        for name in [*names, *urls, *models]:
            if name not in defaults:
                raise ValueError(f"unknown text provider {name!r}; known: {', '.join(defaults)}")
        names += [n for n in defaults if n not in names]
        return [
            TextProviderConfig(
                name=name,
                base_url=_check_url(urls.get(name, defaults[name].base_url)),
                model=models.get(name, defaults[name].model),
                key=getattr(self, f"{name}_key"),
            )
            for name in names
        ]
