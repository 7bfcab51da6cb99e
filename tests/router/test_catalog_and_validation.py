"""Catalog file, style presets, validation errors and idempotency retention."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2
from services.router.catalog import CatalogError, load_catalog
from services.router.idempotency import IdempotencyCache, fingerprint
from services.router.validation import normalize

CATALOG = load_catalog()


def test_bundled_catalog_has_the_required_aliases_and_order() -> None:
    assert list(CATALOG.models) == [
        "flux-schnell",
        "flux-dev",
        "flux-pro",
        "sdxl",
        "sd-2.1",
        "gpt-image-1",
        "gpt-image-1-mini",
        "flux-dev-img2img",
        "flux-kontext",
        "flux-kontext-max",
        "flux-fill",
        "local",
    ]
    providers = [c.provider for c in CATALOG.models["flux-schnell"].candidates]
    # Self-hosted capacity first (skipped when not configured), then the hosted providers.
    assert providers[:2] == ["diffusers", "comfyui"]
    assert CATALOG.self_hosted_providers == {"diffusers", "comfyui"}
    assert providers[2:4] == ["fal", "replicate"]
    assert set(providers[4:]) == {"together", "huggingface"}
    ids = {(c.provider, c.provider_model) for m in CATALOG.models.values() for c in m.candidates}
    assert ("bfl", "flux-pro-1.1") in ids and ("local", "imagegate-local-v1") in ids
    assert CATALOG.aliases_for(router_pb2.PREFERENCE_SPEED)[0] == "flux-schnell"
    assert CATALOG.aliases_for(router_pb2.PREFERENCE_BUDGET)[0] == "sd-2.1"
    assert CATALOG.aliases_for(router_pb2.PREFERENCE_UNSPECIFIED)[0] == "sdxl"


def test_bad_catalog_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("models:\n  x: {tier: legendary, candidates: []}\n")
    with pytest.raises(CatalogError):
        load_catalog(bad)


def test_style_expands_prompt_deterministically_and_sets_size() -> None:
    r = router_pb2.GenerateImageRequest(prompt="a knight {x}", style="pixel-art")
    a, b = normalize(r, CATALOG), normalize(r, CATALOG)
    assert a.template.prompt == b.template.prompt
    assert "pixel art of a knight {x}" in a.template.prompt
    assert (a.template.width, a.template.height) == (512, 512)
    assert "blurry" in a.template.negative_prompt and not a.caller_negative
    r.width = 768
    assert normalize(r, CATALOG).template.width == 768


def test_all_six_styles_exist() -> None:
    assert set(CATALOG.styles) == {
        "game-sprite",
        "pixel-art",
        "isometric-tile",
        "ui-icon",
        "edu-diagram",
        "storybook",
    }


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"prompt": "  "}, "prompt", reasons.INVALID_ARGUMENT),
        ({"num_images": 5}, "num_images", reasons.INVALID_ARGUMENT),
        ({"width": 0}, "width", reasons.INVALID_ARGUMENT),
        ({"height": 100000}, "height", reasons.INVALID_ARGUMENT),
        ({"width": 63}, "width", reasons.INVALID_ARGUMENT),
        ({"model": "dall-e-9"}, "model", reasons.UNKNOWN_MODEL),
        ({"style": "vaporwave"}, "style", reasons.UNKNOWN_STYLE),
        ({"max_cost_micros": -1}, "max_cost_micros", reasons.INVALID_ARGUMENT),
    ],
)
def test_validation_errors(kwargs: dict[str, object], field: str, reason: str) -> None:
    base: dict[str, object] = {"prompt": "fox"}
    base.update(kwargs)
    with pytest.raises(ImagegateError) as info:
        normalize(router_pb2.GenerateImageRequest(**base), CATALOG)  # type: ignore[arg-type]
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == reason
    assert [v.field for v in err.field_violations] == [field]


def test_unset_num_images_means_one() -> None:
    n = normalize(router_pb2.GenerateImageRequest(prompt="fox"), CATALOG)
    assert n.num_images == 1 and n.template.num_images == 1


async def test_idempotency_retention_then_result_expired() -> None:
    t = [0.0]
    cache = IdempotencyCache(
        retention_seconds=600, max_entries=10, max_bytes=1 << 20, clock=lambda: t[0]
    )
    req = router_pb2.GenerateImageRequest(request_id="a", prompt="fox")
    fp = fingerprint(req)
    assert cache.lookup("t1", "a", fp) is None
    fut = cache.begin("t1", "a", fp)
    resp = router_pb2.GenerateImageResponse(request_id="a")
    cache.finish("t1", "a", (resp, None))
    assert fut.result()[0] == resp
    t[0] = 599
    found = cache.lookup("t1", "a", fp)
    assert found is not None and (await found)[0] == resp
    with pytest.raises(ImagegateError) as reused:
        cache.lookup("t1", "a", fingerprint(router_pb2.GenerateImageRequest(prompt="cat")))
    assert reused.value.reason == reasons.IDEMPOTENCY_KEY_REUSED
    assert cache.lookup("t2", "a", fp) is None, "scope is per tenant"
    t[0] = 601
    with pytest.raises(ImagegateError) as expired:
        cache.lookup("t1", "a", fp)
    assert expired.value.reason == reasons.RESULT_EXPIRED


async def test_idempotency_memory_is_bounded() -> None:
    cache = IdempotencyCache(retention_seconds=600, max_entries=3, max_bytes=1 << 30)
    for i in range(10):
        fp = fingerprint(router_pb2.GenerateImageRequest(prompt=str(i)))
        cache.begin("t", str(i), fp)
        cache.finish("t", str(i), (router_pb2.GenerateImageResponse(request_id=str(i)), None))
    assert len(cache) == 3
    with pytest.raises(ImagegateError) as expired:
        cache.lookup("t", "0", fingerprint(router_pb2.GenerateImageRequest(prompt="0")))
    assert expired.value.reason == reasons.RESULT_EXPIRED
