"""Provider emulators standing in for every hosted provider, for demos without the internet."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from imagegate.emulators.base import Emulator
from imagegate.emulators.bfl import BflEmulator
from imagegate.emulators.chat import ChatEmulator
from imagegate.emulators.fal import FalEmulator
from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.emulators.openai import OpenAIEmulator
from imagegate.emulators.replicate import ReplicateEmulator
from imagegate.emulators.together import TogetherEmulator


@dataclass(frozen=True)
class EmulatedProvider:
    """How one provider is emulated: its emulator and the variables that point an adapter at it."""

    name: str
    """Provider name."""
    emulator: type[Emulator]
    """Emulator class."""
    key_var: str
    """Key variable that enables the adapter."""
    key: str
    """Credential the emulator accepts (never a real key)."""
    base_url_var: str
    """Base URL override variable of the adapter."""


PROVIDERS = (
    EmulatedProvider(
        "fal", FalEmulator, "FAL_KEY", "emu-fal-id:emu-fal-secret", "IMAGEGATE_FAL_BASE_URL"
    ),
    EmulatedProvider(
        "huggingface", HuggingFaceEmulator, "HF_TOKEN", "hf_emulated", "IMAGEGATE_HF_BASE_URL"
    ),
    EmulatedProvider(
        "replicate",
        ReplicateEmulator,
        "REPLICATE_API_TOKEN",
        "r8_emulated",
        "IMAGEGATE_REPLICATE_BASE_URL",
    ),
    EmulatedProvider("bfl", BflEmulator, "BFL_API_KEY", "bfl-emulated", "IMAGEGATE_BFL_BASE_URL"),
    EmulatedProvider(
        "openai", OpenAIEmulator, "OPENAI_API_KEY", "sk-emulated", "IMAGEGATE_OPENAI_BASE_URL"
    ),
    EmulatedProvider(
        "together",
        TogetherEmulator,
        "TOGETHER_API_KEY",
        "tgp_v1_emulated",
        "IMAGEGATE_TOGETHER_BASE_URL",
    ),
)


# Text providers emulated for the prompt enhancer: two, so failover between them can be shown.
CHAT_PROVIDERS = (
    ("groq", "GROQ_API_KEY", "gsk_emulated"),
    ("cerebras", "CEREBRAS_API_KEY", "csk-emulated"),
)


async def start_chat_emulators(
    env: MutableMapping[str, str], *, latency: float = 0.0
) -> dict[str, Emulator]:
    """Starts a chat/completions emulator per emulated text provider and points the enhancer's
    keys and base URLs at them (which makes the dev stack start the enhancer)."""
    started: dict[str, Emulator] = {}
    urls = []
    for name, key_var, key in CHAT_PROVIDERS:
        emulator = ChatEmulator(latency=min(latency, 0.2), key=key)
        base_url = await emulator.start("127.0.0.1", 0)
        env[key_var] = key
        urls.append(f"{name}={base_url}/v1")
        started[name] = emulator
    env["IMAGEGATE_ENHANCER_BASE_URLS"] = ",".join(urls)
    env["IMAGEGATE_ENHANCER_ORDER"] = ",".join(name for name, _, _ in CHAT_PROVIDERS)
    return started


async def start_emulators(
    env: MutableMapping[str, str], names: Iterable[str] | None = None, *, latency: float = 0.0
) -> dict[str, Emulator]:
    """Starts emulators on free loopback ports and points the adapters' variables at them.

    With no `names`, every image provider and the text providers of the prompt enhancer.
    """
    wanted = set(names) if names is not None else {p.name for p in PROVIDERS}
    started: dict[str, Emulator] = {}
    for provider in PROVIDERS:
        if provider.name not in wanted:
            continue
        emulator = provider.emulator(latency=latency, key=provider.key)
        base_url = await emulator.start("127.0.0.1", 0)
        env[provider.key_var] = provider.key
        env[provider.base_url_var] = base_url
        if provider.name == "huggingface":
            # The emulator also answers the Hub's provider mapping (the `auto` route's order).
            env["IMAGEGATE_HF_HUB_URL"] = base_url
        started[provider.name] = emulator
    if names is None:
        started.update(await start_chat_emulators(env, latency=latency))
    return started
