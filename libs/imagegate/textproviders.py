"""The text providers the prompt enhancer knows: base URL, default model and key variable of each.

Facts and their sources are in docs/enhancer.md; prices live in services/metering/prices.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextProviderDefaults:
    """What the enhancer knows about one provider before settings override it."""

    name: str
    """Provider name, e.g. "groq" (also the price catalog's provider)."""
    base_url: str
    """OpenAI-compatible root; `/chat/completions` is appended."""
    model: str
    """Model id called by default (a small, cheap instruction model)."""
    key_var: str
    """Environment variable holding the provider's API key."""


# Default priority order: fast and cheap first.
TEXT_PROVIDERS: tuple[TextProviderDefaults, ...] = (
    TextProviderDefaults(
        "groq", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant", "GROQ_API_KEY"
    ),
    TextProviderDefaults(
        "cerebras", "https://api.cerebras.ai/v1", "gpt-oss-120b", "CEREBRAS_API_KEY"
    ),
    TextProviderDefaults(
        "sambanova",
        "https://api.sambanova.ai/v1",
        "Meta-Llama-3.1-8B-Instruct",
        "SAMBANOVA_API_KEY",
    ),
    TextProviderDefaults(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        "accounts/fireworks/models/gpt-oss-20b",
        "FIREWORKS_API_KEY",
    ),
    TextProviderDefaults(
        "nebius",
        "https://api.tokenfactory.nebius.com/v1",
        "meta-llama/Meta-Llama-3.1-8B-Instruct",
        "NEBIUS_API_KEY",
    ),
    TextProviderDefaults(
        "novita",
        "https://api.novita.ai/openai/v1",
        "meta-llama/llama-3.1-8b-instruct",
        "NOVITA_API_KEY",
    ),
    TextProviderDefaults(
        "hyperbolic",
        "https://api.hyperbolic.xyz/v1",
        "meta-llama/Llama-3.3-70B-Instruct",
        "HYPERBOLIC_API_KEY",
    ),
    TextProviderDefaults(
        "nscale",
        "https://inference.api.nscale.com/v1",
        "meta-llama/Llama-3.1-8B-Instruct",
        "NSCALE_API_KEY",
    ),
    TextProviderDefaults(
        "cohere", "https://api.cohere.ai/compatibility/v1", "command-r7b-12-2024", "COHERE_API_KEY"
    ),
    TextProviderDefaults(
        "featherless",
        "https://api.featherless.ai/v1",
        "meta-llama/Llama-3.1-8B-Instruct",
        "FEATHERLESS_API_KEY",
    ),
)
"""Every known provider in the default priority order."""

KEY_VARS: tuple[str, ...] = tuple(p.key_var for p in TEXT_PROVIDERS)
"""The key variables; any one of them set enables the enhancer in `make run`."""
