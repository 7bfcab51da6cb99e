"""Provider emulators standing in for every hosted provider, for demos without the internet."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from imagegate.emulators.base import Emulator
from imagegate.emulators.bfl import BflEmulator
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


async def start_emulators(
    env: MutableMapping[str, str], names: Iterable[str] | None = None, *, latency: float = 0.0
) -> dict[str, Emulator]:
    """Starts emulators on free loopback ports and points the adapters' variables at them."""
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
    return started
