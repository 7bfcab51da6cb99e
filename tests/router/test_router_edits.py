"""Input images through the Router with real adapters and provider emulators on loopback."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageDraw

from imagegate.cli.args import parse
from imagegate.cli.main import _run_command
from imagegate.emulators.base import Fault
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.local.adapter import LocalAdapter
from services.local.config import LocalSettings
from services.metering.catalog import load_catalog as load_prices
from tests.contract.harness import Harness, load_factory
from tests.fixtures.router_stack import RouterStack, bearer, start_stack

PROVIDERS = ("fal", "replicate", "bfl", "openai", "together")
KEY = bearer("key-pro")


@dataclass
class Edits:
    stack: RouterStack
    harnesses: dict[str, Harness]

    def calls(self, provider: str) -> int:
        return len(self.harnesses[provider].emulator.calls)

    def clear(self) -> None:
        for h in self.harnesses.values():
            h.emulator.faults.clear()
            h.emulator.calls.clear()


@pytest.fixture(scope="module")
async def edits() -> AsyncIterator[Edits]:
    telemetry = setup_telemetry("edits-harness", span_exporters=[])
    harnesses = {p: await load_factory(p)(telemetry) for p in PROVIDERS}
    stack = await start_stack(
        {p: h.adapter for p, h in harnesses.items()},
        prices=load_prices().prices,
        hedge=False,
    )
    try:
        yield Edits(stack, harnesses)
    finally:
        await stack.stop()
        for h in harnesses.values():
            await h.aclose()


@pytest.fixture(autouse=True)
def _fresh(edits: Edits) -> None:
    edits.clear()


def png(size: tuple[int, int] = (512, 512), alpha: bool = False) -> bytes:
    img = Image.new(
        "RGBA" if alpha else "RGB", size, (40, 90, 160, 255) if alpha else (40, 90, 160)
    )
    draw = ImageDraw.Draw(img)
    draw.rectangle(
        [10, 10, size[0] // 3, size[1] // 3], fill=(240, 200, 20, 0) if alpha else (240, 200, 20)
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask(size: tuple[int, int] = (512, 512)) -> bytes:
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).rectangle([0, 0, size[0] // 2, size[1] // 2], fill=255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def img2img(**kw: object) -> router_pb2.GenerateImageRequest:
    base: dict[str, object] = {"prompt": "the same castle at dusk", "image": png(), "strength": 0.6}
    base.update(kw)
    return router_pb2.GenerateImageRequest(**base)  # type: ignore[arg-type]


async def test_image_to_image_goes_only_to_providers_that_declare_it(edits: Edits) -> None:
    resp = await edits.stack.stub.GenerateImage(img2img(), metadata=KEY, timeout=30)
    assert (resp.provider, resp.provider_model) == ("fal", "fal-ai/flux/dev/image-to-image")
    assert (resp.images[0].width, resp.images[0].height) == (512, 512)
    sent = edits.harnesses["fal"].emulator.calls_to("image-to-image", "POST")
    assert sent and sent[0].body["image_url"].startswith("data:image/png;base64,")
    assert sent[0].body["strength"] == pytest.approx(0.6)
    for provider in ("bfl", "openai", "together", "replicate"):
        assert edits.calls(provider) == 0, f"{provider} was called"
    assert resp.cost_micros > 0
    attrs = [dict(s.attributes or {}) for s in edits.stack.spans.get_finished_spans()]
    assert any(a.get("imagegate.edit_mode") == "image_to_image" for a in attrs)
    assert all(len(repr(a)) < 100_000 for a in attrs), "input image bytes on a span"


async def test_image_to_image_fails_over_between_two_declaring_providers(edits: Edits) -> None:
    edits.harnesses["fal"].emulator.faults.set(Fault("error_503"))
    resp = await edits.stack.stub.GenerateImage(img2img(), metadata=KEY, timeout=30)
    assert (resp.provider, resp.provider_model) == ("replicate", "stability-ai/sdxl")
    assert [(a.provider, a.outcome) for a in resp.attempts] == [
        ("fal", router_pb2.ATTEMPT_OUTCOME_UNAVAILABLE),
        ("replicate", router_pb2.ATTEMPT_OUTCOME_SUCCEEDED),
    ]
    created = [c for c in edits.harnesses["replicate"].emulator.calls if c.method == "POST"]
    assert created[0].body["input"]["image"].startswith("data:image/png;base64,")
    assert created[0].body["input"]["prompt_strength"] == pytest.approx(0.6)
    # Providers without image-to-image were skipped, never called.
    for provider in ("bfl", "openai", "together"):
        assert edits.calls(provider) == 0, f"{provider} was called"


async def test_no_declaring_provider_left_is_refused_without_a_call(edits: Edits) -> None:
    err_req = img2img(allowed_providers=["bfl", "openai", "together"])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(err_req, metadata=KEY, timeout=30)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reasons.NO_CANDIDATE)
    assert "image-to-image not offered" in err.message
    assert all(edits.calls(p) == 0 for p in PROVIDERS)


async def test_oversized_input_image_is_refused_before_any_provider_call(edits: Edits) -> None:
    huge = png() + b"\0" * (10 * 1024 * 1024)
    held = len(edits.stack.quota.reservations)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(img2img(image=huge), metadata=KEY, timeout=30)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_ARGUMENT)
    assert [v.field for v in err.field_violations] == ["image"]
    assert "at most 10485760 bytes" in err.field_violations[0].description
    assert all(edits.calls(p) == 0 for p in PROVIDERS), "an emulator saw a call"
    assert len(edits.stack.quota.reservations) == held, "quota was reserved"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": b"GIF89a not an accepted format"}, "image"),
        ({"mask": mask((256, 256))}, "mask"),
        ({"strength": 1.5}, "strength"),
        ({"reference_images": [png()] * 5}, "reference_images"),
        ({"image": b"", "mask": mask()}, "image"),
        ({"mask_from_alpha": True}, "mask_from_alpha"),
        ({"mask_from_alpha": True, "mask": mask()}, "mask"),
        ({"image": b"", "strength": 0.5, "prompt": "x"}, "strength"),
    ],
)
async def test_bad_inputs_name_their_field_and_call_nobody(
    edits: Edits, change: dict[str, object], field: str
) -> None:
    req = img2img()
    for name, value in change.items():
        if name == "reference_images":
            req.reference_images.extend(value)  # type: ignore[arg-type]
        else:
            setattr(req, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(req, metadata=KEY, timeout=30)
    err = parse_rpc_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in err.field_violations]
    assert all(edits.calls(p) == 0 for p in PROVIDERS)


async def test_inpainting_with_a_separate_mask_goes_to_a_fill_model(edits: Edits) -> None:
    req = router_pb2.GenerateImageRequest(
        prompt="a wooden door", image=png(), mask=mask(), model="flux-fill"
    )
    resp = await edits.stack.stub.GenerateImage(req, metadata=KEY, timeout=30)
    assert (resp.provider, resp.provider_model) == ("bfl", "flux-pro-1.0-fill")
    submit = edits.harnesses["bfl"].emulator.calls_to("flux-pro-1.0-fill", "POST")[0]
    assert set(submit.body) >= {"image", "mask", "prompt"}
    assert (resp.images[0].width, resp.images[0].height) == (512, 512)


async def test_alpha_mask_is_converted_and_fill_fails_over_to_fal(edits: Edits) -> None:
    edits.harnesses["bfl"].emulator.faults.set(Fault("error_503"))
    req = router_pb2.GenerateImageRequest(
        prompt="a wooden door", image=png(alpha=True), mask_from_alpha=True, model="flux-fill"
    )
    resp = await edits.stack.stub.GenerateImage(req, metadata=KEY, timeout=30)
    assert (resp.provider, resp.provider_model) == ("fal", "fal-ai/flux-pro/v1/fill")
    sent = edits.harnesses["fal"].emulator.calls_to("v1/fill", "POST")[0]
    assert sent.body["mask_url"].startswith("data:image/png;base64,")


async def test_reference_edit_goes_to_kontext_and_openai_edits_takes_several(
    edits: Edits,
) -> None:
    req = router_pb2.GenerateImageRequest(
        prompt="put the hat from the second image on the knight",
        reference_images=[png((1024, 1024)), png((1024, 1024))],
        preference=router_pb2.PREFERENCE_QUALITY,
    )
    resp = await edits.stack.stub.GenerateImage(req, metadata=KEY, timeout=30)
    assert (resp.provider, resp.provider_model) == ("bfl", "flux-kontext-max")
    body = edits.harnesses["bfl"].emulator.calls_to("flux-kontext-max", "POST")[0].body
    assert {"input_image", "input_image_2", "aspect_ratio"} <= set(body)
    resp = await edits.stack.stub.GenerateImage(
        router_pb2.GenerateImageRequest(
            prompt=req.prompt, reference_images=req.reference_images, model="gpt-image-1"
        ),
        metadata=KEY,
        timeout=30,
    )
    assert resp.provider == "openai"
    form = edits.harnesses["openai"].emulator.calls_to("/v1/images/edits")[0].body
    assert isinstance(form["image[]"], list) and len(form["image[]"]) == 2
    assert resp.usage.input_tokens > 0 and resp.cost_micros > 0


async def test_mask_on_an_image_to_image_model_degrades_only_when_allowed(edits: Edits) -> None:
    strict = img2img(mask=mask(), model="flux-dev-img2img")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(strict, metadata=KEY, timeout=30)
    assert parse_rpc_error(info.value).reason == reasons.NO_CANDIDATE
    assert edits.calls("fal") == 0
    lenient = img2img(mask=mask(), model="flux-dev-img2img", allow_degradation=True)
    resp = await edits.stack.stub.GenerateImage(lenient, metadata=KEY, timeout=30)
    assert resp.provider == "fal"
    assert [d.field for d in resp.deviations] == ["mask"]


async def test_text_requests_never_reach_edit_only_models(edits: Edits) -> None:
    req = router_pb2.GenerateImageRequest(prompt="a castle", model="flux-fill")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(req, metadata=KEY, timeout=30)
    err = parse_rpc_error(info.value)
    assert err.reason == reasons.NO_CANDIDATE and "needs an input image" in err.message
    assert all(edits.calls(p) == 0 for p in PROVIDERS)


async def test_cli_generate_with_image_and_strength_runs_image_to_image(
    edits: Edits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(png())
    monkeypatch.setenv("IMAGEGATE_ROUTER_ADDR", edits.stack.router.address)
    monkeypatch.setenv("IMAGEGATE_API_KEY", "key-pro")
    args = parse(
        [
            "generate",
            "the same castle at dusk",
            "--image",
            str(source),
            "--strength",
            "0.6",
            "-o",
            str(tmp_path / "out.png"),
            "--json",
            "--quiet",
        ]
    )
    assert await _run_command(args.func, args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["provider_model"] == "fal-ai/flux/dev/image-to-image"
    assert Image.open(tmp_path / "out.png").size == (512, 512)
    sent = edits.harnesses["fal"].emulator.calls_to("image-to-image", "POST")[0]
    assert sent.body["strength"] == pytest.approx(0.6)


async def test_estimate_prices_only_the_candidates_that_can_edit(edits: Edits) -> None:
    resp = await edits.stack.stub.EstimateCost(
        router_pb2.EstimateCostRequest(request=img2img()), metadata=KEY, timeout=10
    )
    usable = [(c.provider, c.provider_model) for c in resp.candidates if not c.skip_reason]
    assert usable == [("fal", "fal-ai/flux/dev/image-to-image"), ("replicate", "stability-ai/sdxl")]
    skipped = {c.provider_model: c.skip_reason for c in resp.candidates if c.skip_reason}
    assert skipped["flux-kontext-pro"].startswith("image-to-image not offered")
    assert skipped["fal-ai/fast-sdxl"] == "image-to-image not offered"
    # 512x512 rounds up to 1 MP at $0.03/MP on fal.
    assert resp.expected_cost_micros == 30000
    assert all(edits.calls(p) == 0 for p in PROVIDERS)


async def test_an_input_above_grpcs_4_mib_default_reaches_the_provider(edits: Edits) -> None:
    noise = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=0)
    big = buf.getvalue()
    assert 4 * 1024 * 1024 < len(big) < 10 * 1024 * 1024
    # Every hop (CLI or client -> Router -> adapter) raises the limit to 64 MiB on both ends.
    async with create_channel(edits.stack.router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.GenerateImage(img2img(image=big), metadata=KEY, timeout=60)
    assert resp.provider == "fal"
    assert (resp.images[0].width, resp.images[0].height) == (1024, 1024)
    sent = edits.harnesses["fal"].emulator.calls_to("image-to-image", "POST")[0]
    assert len(sent.body["image_url"]) > 1024 * 1024, "the input went inline to the provider"


async def test_a_budget_only_plan_is_told_its_plan_forbids_edits(edits: Edits) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await edits.stack.stub.GenerateImage(img2img(), metadata=bearer("key-free"), timeout=30)
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        reasons.PLAN_FORBIDS_MODEL,
    )
    assert all(edits.calls(p) == 0 for p in PROVIDERS)


async def test_local_backend_stands_in_for_image_to_image_and_refuses_references() -> None:
    stack = await start_stack({"local": LocalAdapter(LocalSettings())})
    try:
        resp = await stack.stub.GenerateImage(img2img(), metadata=KEY, timeout=30)
        assert (resp.provider, resp.local_substitute) == ("local", True)
        assert (resp.images[0].width, resp.images[0].height) == (512, 512)
        refs = router_pb2.GenerateImageRequest(prompt="x", reference_images=[png()])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(refs, metadata=KEY, timeout=30)
        err = parse_rpc_error(info.value)
        assert err.reason == reasons.NO_CANDIDATE and "reference edits not offered" in err.message
    finally:
        await stack.stop()
