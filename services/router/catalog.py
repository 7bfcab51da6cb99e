"""The model catalog and routing policy, loaded from YAML into frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagegate.common.v1 import catalog_pb2
from imagegate.router.v1 import router_pb2

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")

TIERS = {
    "budget": catalog_pb2.QUALITY_TIER_BUDGET,
    "fast": catalog_pb2.QUALITY_TIER_FAST,
    "standard": catalog_pb2.QUALITY_TIER_STANDARD,
    "premium": catalog_pb2.QUALITY_TIER_PREMIUM,
}
# Facts another file owns: stating them here again is refused, so the two can never disagree.
FOREIGN_FACTS = {
    "price_unit": "price units are Metering's (services/metering/prices.yaml)",
    "capabilities": "capabilities are the adapter's (its ModelSpec, sent by DescribeProvider)",
}
PREFERENCES = {
    "speed": router_pb2.PREFERENCE_SPEED,
    "balanced": router_pb2.PREFERENCE_BALANCED,
    "quality": router_pb2.PREFERENCE_QUALITY,
    "budget": router_pb2.PREFERENCE_BUDGET,
}


class CatalogError(ValueError):
    """The catalog file is malformed."""


@dataclass(frozen=True)
class Candidate:
    """One provider model that can serve an alias."""

    alias: str
    """Model alias, e.g. "flux-schnell"."""
    provider: str
    """Provider name, e.g. "fal"."""
    provider_model: str
    """The provider's model id."""
    tier: str
    """Quality tier of the alias."""
    local: bool = False
    """Whether the embedded local backend serves it."""

    @property
    def key(self) -> str:
        """ "provider/provider_model", as shown to callers."""
        return f"{self.provider}/{self.provider_model}"


@dataclass(frozen=True)
class ModelEntry:
    """A model alias."""

    alias: str
    """Alias."""
    description: str
    """Human-readable description."""
    tier: str
    """budget / fast / standard / premium."""
    default_size: tuple[int, int]
    """Size used when neither the caller nor a style sets one."""
    candidates: tuple[Candidate, ...]
    """Candidates in priority order."""
    prompt_format: str = "natural"
    """How the model wants prompts written: "natural" (FLUX, GPT image) or "tags" (SD)."""


@dataclass(frozen=True)
class StylePreset:
    """A named style preset."""

    name: str
    """Name, e.g. "pixel-art"."""
    description: str
    """What it is for."""
    prompt_template: str
    """Template with "{prompt}"."""
    negative_prompt: str
    """Negative prompt added by the preset."""
    size: tuple[int, int]
    """Default (width, height)."""
    enhance_by_default: bool = False
    """Whether requests in this style enhance their prompt unless they say otherwise."""

    def expand(self, prompt: str) -> str:
        """The caller's prompt inside the template (plain replace: braces in prompts are safe)."""
        return self.prompt_template.replace("{prompt}", prompt.strip())

    def merge_negative(self, negative: str) -> str:
        """The caller's negative prompt followed by the preset's."""
        parts = [p for p in (negative.strip(), self.negative_prompt) if p]
        return ", ".join(parts)

    def to_proto(self) -> router_pb2.Style:
        """The proto form."""
        return router_pb2.Style(
            name=self.name,
            description=self.description,
            prompt_template=self.prompt_template,
            negative_prompt=self.negative_prompt,
            default_width=self.size[0],
            default_height=self.size[1],
            enhance_by_default=self.enhance_by_default,
        )


@dataclass(frozen=True)
class Catalog:
    """Models, preference lists, styles and provider timeouts."""

    models: dict[str, ModelEntry]
    """Aliases in file order."""
    preferences: dict[int, tuple[str, ...]]
    """Preference enum value -> ordered aliases."""
    styles: dict[str, StylePreset]
    """Style presets by name."""
    provider_timeouts: dict[str, float] = field(default_factory=dict)
    """Longest attempt per provider, seconds."""
    local_provider: str = "local"
    """Provider name of the embedded local backend."""
    local_model: str = "imagegate-local-v1"
    """Its model id."""
    edit_preferences: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Preference enum value -> ordered aliases for requests with input images."""
    self_hosted_providers: frozenset[str] = frozenset()
    """Providers running on the operator's own hardware: tried before hosted ones."""

    @property
    def local_alias(self) -> str | None:
        """The alias served by the local backend, if the catalog has one."""
        for entry in self.models.values():
            if any(c.provider == self.local_provider for c in entry.candidates):
                return entry.alias
        return None

    def local_candidate(self, alias: str, tier: str) -> Candidate:
        """The local backend standing in for `alias`."""
        return Candidate(
            alias=alias,
            provider=self.local_provider,
            provider_model=self.local_model,
            tier=tier,
            local=True,
        )

    def aliases_for(self, preference: int, *, edit: bool = False) -> tuple[str, ...]:
        """Aliases tried for a preference (unspecified means balanced).

        A request with input images uses `edit_preferences` when the catalog has them: the
        text-to-image lists name models that mostly cannot edit.
        """
        if preference == router_pb2.PREFERENCE_UNSPECIFIED:
            preference = router_pb2.PREFERENCE_BALANCED
        if edit and preference in self.edit_preferences:
            return self.edit_preferences[preference]
        return self.preferences.get(preference, ())


def _refuse_foreign_facts(raw: dict[str, object], where: str) -> None:
    foreign = sorted(FOREIGN_FACTS.keys() & raw.keys())
    if foreign:
        raise CatalogError(f"{where}: remove {foreign[0]!r}: {FOREIGN_FACTS[foreign[0]]}")


def load_catalog(path: Path | None = None) -> Catalog:
    """Reads and checks a catalog file (the bundled one when `path` is None)."""
    path = path or DEFAULT_CATALOG
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CatalogError(f"cannot read catalog {path}: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise CatalogError(f"{path}: expected a mapping with 'models'")
    local_provider = str(raw.get("local_provider", "local"))
    models: dict[str, ModelEntry] = {}
    for alias, m in raw["models"].items():
        where = f"{path}: model {alias}"
        tier = m.get("tier")
        if tier not in TIERS:
            raise CatalogError(f"{where}: tier must be one of {sorted(TIERS)}")
        cands = []
        for stated in [m, *(m.get("candidates") or [])]:
            _refuse_foreign_facts(stated, where)
        for c in m.get("candidates") or []:
            if not c.get("provider") or not c.get("model"):
                raise CatalogError(f"{where}: candidate needs provider and model")
            cands.append(
                Candidate(
                    alias=alias,
                    provider=c["provider"],
                    provider_model=c["model"],
                    tier=tier,
                    local=c["provider"] == local_provider,
                )
            )
        if not cands:
            raise CatalogError(f"{where}: needs at least one candidate")
        w, h = m.get("default_size", [1024, 1024])
        prompt_format = str(m.get("prompt_format", "natural"))
        if prompt_format not in ("natural", "tags"):
            raise CatalogError(f"{where}: prompt_format must be natural or tags")
        models[alias] = ModelEntry(
            alias=alias,
            description=str(m.get("description", "")),
            tier=tier,
            default_size=(int(w), int(h)),
            candidates=tuple(cands),
            prompt_format=prompt_format,
        )
    prefs = _preferences(raw.get("preferences"), models, f"{path}: preference")
    edit_prefs = _preferences(raw.get("edit_preferences"), models, f"{path}: edit preference")
    styles: dict[str, StylePreset] = {}
    for name, s in (raw.get("styles") or {}).items():
        template = str(s.get("prompt_template", "{prompt}"))
        if "{prompt}" not in template:
            raise CatalogError(f"{path}: style {name} template lacks {{prompt}}")
        w, h = s.get("size", [1024, 1024])
        styles[name] = StylePreset(
            name=name,
            description=str(s.get("description", "")),
            prompt_template=template,
            negative_prompt=str(s.get("negative_prompt", "")),
            size=(int(w), int(h)),
            enhance_by_default=bool(s.get("enhance_by_default", False)),
        )
    return Catalog(
        models=models,
        preferences=prefs,
        edit_preferences=edit_prefs,
        styles=styles,
        provider_timeouts={k: float(v) for k, v in (raw.get("provider_timeouts") or {}).items()},
        local_provider=local_provider,
        local_model=str(raw.get("local_model", "imagegate-local-v1")),
        self_hosted_providers=frozenset(str(p) for p in raw.get("self_hosted_providers") or ()),
    )


def _preferences(
    raw: object, models: dict[str, ModelEntry], where: str
) -> dict[int, tuple[str, ...]]:
    out: dict[int, tuple[str, ...]] = {}
    for name, aliases in (raw or {}).items():  # type: ignore[attr-defined]
        if name not in PREFERENCES:
            raise CatalogError(f"{where} {name!r} is unknown")
        unknown = [a for a in aliases if a not in models]
        if unknown:
            raise CatalogError(f"{where} {name} names unknown models {unknown}")
        out[PREFERENCES[name]] = tuple(aliases)
    return out
