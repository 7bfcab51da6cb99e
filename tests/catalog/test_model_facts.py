"""Every view of a model's facts agrees: Router catalog, adapters' ModelSpecs, Metering's prices."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image
from pydantic import SecretStr

from imagegate.common.v1 import catalog_pb2
from imagegate.devstack.services import ADAPTERS, SELF_HOSTED
from imagegate.pricing import PriceBook, quote_micros
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.servicer import PRICE_UNIT_TO_PROTO, capabilities_proto
from imagegate.providerkit.types import ModelSpec
from imagegate.router.v1 import router_pb2
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings
from services.comfyui.adapter import ComfyUIAdapter
from services.comfyui.config import ComfyUISettings
from services.diffusers.adapter import DiffusersAdapter
from services.diffusers.config import DiffusersSettings
from services.diffusers.profiles import PROFILES
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from services.metering.catalog import load_catalog as load_prices
from services.openai.adapter import OpenAIAdapter
from services.openai.config import OpenAISettings
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings
from services.router.catalog import Catalog, CatalogError, load_catalog
from services.router.validation import capability_gaps, normalize
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings

KEY = SecretStr("test-key-never-sent")
# Tiers that promise a price band, cheapest first; "fast" promises speed, not price.
PRICE_ORDER = ("budget", "standard", "premium")
Served = dict[str, dict[str, ModelSpec]]


def adapter_factories() -> dict[str, Callable[[], Adapter]]:
    """Every adapter the stack runs, built as its process builds it (no request is sent)."""
    return {
        "local": lambda: LocalAdapter(LocalSettings()),
        "fal": lambda: FalAdapter(FalSettings(key=KEY)),
        "huggingface": lambda: HuggingFaceAdapter(HuggingFaceSettings(key=KEY)),
        "replicate": lambda: ReplicateAdapter(ReplicateSettings(key=KEY)),
        "bfl": lambda: BflAdapter(BflSettings(key=KEY)),
        "openai": lambda: OpenAIAdapter(OpenAISettings(key=KEY)),
        "together": lambda: TogetherAdapter(TogetherSettings(key=KEY)),
        "comfyui": lambda: ComfyUIAdapter(ComfyUISettings(base_url="http://127.0.0.1:8188")),
    }


def self_hosted_adapters() -> list[Adapter]:
    """Self-hosted adapters, once per open model they can be configured to serve."""
    return [
        DiffusersAdapter(DiffusersSettings(model_path=Path("/weights"), model_id=model_id))
        for model_id in PROFILES
    ]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """Provider -> provider model id -> the ModelSpec its adapter serves."""
    adapters = [build() for build in adapter_factories().values()] + self_hosted_adapters()
    out: Served = {}
    for a in adapters:
        out.setdefault(a.name, {}).update({m.id: m for m in a.models()})
    try:
        yield out
    finally:
        for a in adapters:
            await a.aclose()


@pytest.fixture
def catalog() -> Catalog:
    """The Router's bundled catalog."""
    return load_catalog()


@pytest.fixture
def prices() -> PriceBook:
    """Metering's bundled price catalog."""
    return load_prices().book


def test_every_adapter_the_stack_runs_is_checked() -> None:
    checked = set(adapter_factories()) | {a.name for a in self_hosted_adapters()}
    assert checked == {s.name for s in (*ADAPTERS, *SELF_HOSTED)} | {"local"}


def test_every_router_candidate_is_served_by_its_adapter(catalog: Catalog, served: Served) -> None:
    missing = [
        c.key
        for entry in catalog.models.values()
        for c in entry.candidates
        if c.provider_model not in served.get(c.provider, {})
    ]
    assert missing == []


def test_every_router_candidate_is_priced_by_metering(catalog: Catalog, prices: PriceBook) -> None:
    unpriced = [
        c.key
        for entry in catalog.models.values()
        for c in entry.candidates
        if prices.find(c.provider, c.provider_model) is None
    ]
    assert unpriced == []


def test_every_served_model_has_a_router_alias(catalog: Catalog, served: Served) -> None:
    routed = {(c.provider, c.provider_model) for e in catalog.models.values() for c in e.candidates}
    unrouted = [f"{p}/{m}" for p, models in served.items() for m in models if (p, m) not in routed]
    assert unrouted == []


def test_adapters_measure_the_unit_metering_prices_in(served: Served, prices: PriceBook) -> None:
    disagreements: list[str] = []
    for provider, models in served.items():
        for model_id, spec in models.items():
            price = prices.find(provider, model_id)
            metering = "unpriced" if price is None else catalog_pb2.PriceUnit.Name(price.unit)
            adapter = catalog_pb2.PriceUnit.Name(PRICE_UNIT_TO_PROTO[spec.price_unit])
            if adapter != metering:
                disagreements.append(
                    f"{provider}/{model_id}: adapter {adapter}, metering {metering}"
                )
    assert disagreements == []


def test_every_candidate_honours_its_alias_default_request(
    catalog: Catalog, served: Served
) -> None:
    gaps: list[str] = []
    for alias, entry in catalog.models.items():
        specs = [served.get(c.provider, {}).get(c.provider_model) for c in entry.candidates]
        request = router_pb2.GenerateImageRequest(prompt="x", model=alias)
        if any(s is not None and s.input_image_required for s in specs):
            # An edit-only alias's default request is the edit its first candidate declares.
            first = next(s for s in specs if s is not None)
            request.image = _png(entry.default_size)
            if first.inpainting:
                request.mask = _png(entry.default_size)
            elif first.max_reference_images:
                request.reference_images.append(request.image)
                request.ClearField("image")
        norm = normalize(request, catalog)
        for c in entry.candidates:
            spec = served.get(c.provider, {}).get(c.provider_model)
            if spec is None:
                continue
            found, _ = capability_gaps(
                capabilities_proto(spec), norm.template, caller_negative=False
            )
            gaps.extend(f"{alias} on {c.key}: {gap}" for gap in found)
    assert gaps == []


def test_a_cheaper_tier_never_costs_more_than_a_dearer_one(
    catalog: Catalog, prices: PriceBook
) -> None:
    quotes: dict[str, list[tuple[int, str]]] = {tier: [] for tier in PRICE_ORDER}
    for entry in catalog.models.values():
        if entry.tier not in quotes or any(c.local for c in entry.candidates):
            continue
        w, h = entry.default_size
        for c in entry.candidates:
            if c.provider in catalog.self_hosted_providers:
                # Own hardware's amortised cost, not a provider's price band.
                continue
            price = prices.find(c.provider, c.provider_model)
            if price is not None:
                # Tiers order typical prices: quality-priced models at their medium setting.
                cost = quote_micros(price, width=w, height=h, num_images=1, quality="medium")
                quotes[entry.tier].append((cost, f"{entry.alias} on {c.key}"))
    for cheaper, dearer in pairwise(PRICE_ORDER):
        most, most_at = max(quotes[cheaper])
        least, least_at = min(quotes[dearer])
        assert most <= least, f"{cheaper} {most_at} ({most}) > {dearer} {least_at} ({least})"


@pytest.mark.parametrize(
    ("where", "fact"),
    [("candidate", "price_unit: image"), ("model", "capabilities: {seed: true}")],
)
def test_catalog_refuses_a_fact_another_file_owns(tmp_path: Path, where: str, fact: str) -> None:
    candidate = "{provider: fal, model: fal-ai/flux/schnell" + (
        f", {fact}}}" if where == "candidate" else "}"
    )
    model_fact = f"    {fact}\n" if where == "model" else ""
    path = tmp_path / "catalog.yaml"
    path.write_text(f"models:\n  a:\n    tier: fast\n{model_fact}    candidates: [{candidate}]\n")
    with pytest.raises(CatalogError, match=fact.split(":")[0]):
        load_catalog(path)


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buf, format="PNG")
    return buf.getvalue()
