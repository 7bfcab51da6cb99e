"""The contract suite for input images: every edit mode a model declares, over every adapter."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from PIL import Image, ImageDraw

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.emulators.base import FAULT_KINDS, Fault
from imagegate.grpckit import reasons
from imagegate.inputs.checks import EditMode
from imagegate.provider.v1 import provider_pb2

from .harness import harness_names
from .test_contract import DEADLINE, RETRY_AFTER, SHORT_DEADLINE, SLACK, Stack, _close, _stack

PROVIDERS = harness_names()
MODES = (EditMode.IMAGE_TO_IMAGE, EditMode.INPAINT, EditMode.REFERENCE)


def png(size: tuple[int, int], colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).rectangle(
        [size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=(250, 250, 0)
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(size: tuple[int, int]) -> bytes:
    """The gateway's mask convention: grayscale, white repaints."""
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).rectangle([0, 0, size[0] // 2, size[1] // 2], fill=255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def declares(caps: catalog_pb2.Capabilities, mode: EditMode) -> bool:
    if mode is EditMode.IMAGE_TO_IMAGE:
        return caps.image_to_image
    if mode is EditMode.INPAINT:
        return caps.inpainting
    return caps.max_reference_images > 0


def size_for(caps: catalog_pb2.Capabilities, stack: Stack) -> tuple[int, int]:
    """A size the model accepts exactly."""
    fixed = [(s.width, s.height) for s in caps.fixed_sizes]
    if fixed:
        return (1024, 1024) if (1024, 1024) in fixed else fixed[0]
    w, h = stack.harness.width, stack.harness.height
    m = caps.side_multiple or 1
    lo = caps.min_side or 1
    return max(lo, w // m * m), max(lo, h // m * m)


def edit_request(
    stack: Stack, model: str, mode: EditMode, size: tuple[int, int], **extra: object
) -> provider_pb2.GenerateImageRequest:
    req = stack.request(model=model, width=size[0], height=size[1], **extra)
    if mode is EditMode.IMAGE_TO_IMAGE:
        req.image = png(size)
        req.strength = 0.6
    elif mode is EditMode.INPAINT:
        req.image = png(size)
        req.mask = mask_png(size)
    else:
        req.reference_images.extend([png(size), png(size, (200, 30, 30))])
    return req


async def declared_modes(
    stack: Stack, *, every_model: bool = True
) -> list[tuple[EditMode, provider_pb2.ProviderModel]]:
    """(mode, model) for every model that declares each mode (or the first model per mode)."""
    described = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    out = []
    for mode in MODES:
        models = [m for m in described.models if declares(m.capabilities, mode)]
        out += [(mode, m) for m in (models if every_model else models[:1])]
    return out


@pytest.fixture(params=PROVIDERS)
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    s = await _stack(request.param)
    try:
        yield s
    finally:
        await _close(s)


async def test_every_declared_edit_mode_returns_the_asked_image(stack: Stack) -> None:
    for mode, model in await declared_modes(stack):
        size = size_for(model.capabilities, stack)
        refs = (
            2 if mode is EditMode.REFERENCE and model.capabilities.max_reference_images >= 2 else 1
        )
        req = edit_request(stack, model.id, mode, size)
        del req.reference_images[refs:]
        if not model.capabilities.strength:
            req.ClearField("strength")
        before = len(stack.harness.emulator.calls)
        resp = await stack.stub.GenerateImage(req, timeout=DEADLINE)
        assert len(resp.images) == 1, mode
        assert (resp.images[0].width, resp.images[0].height) == size, mode
        assert resp.images[0].format == image_pb2.IMAGE_FORMAT_PNG
        assert resp.model == model.id
        assert list(resp.deviations) == [], (mode, resp.deviations)
        sent = stack.harness.emulator.calls[before:]
        assert sent, "the provider was called"
        assert any(_carries_inputs(c.body) for c in sent), f"{mode}: input images were sent"


def _carries_inputs(body: object) -> bool:
    """Whether a recorded request body carries an input image (inline, never a caller URL)."""
    text = repr(body)
    return "base64," in text or "'sha256'" in text or _has_base64_image(body)


def _has_base64_image(body: object) -> bool:
    if isinstance(body, dict):
        return any(_has_base64_image(v) for v in body.values())
    if isinstance(body, list):
        return any(_has_base64_image(v) for v in body)
    return isinstance(body, str) and body.startswith(("iVBORw0KGgo", "/9j/", "UklGR"))


async def test_models_without_an_edit_capability_refuse_input_images(stack: Stack) -> None:
    described = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    for mode in MODES:
        lacking = next(
            (
                m
                for m in described.models
                if not declares(m.capabilities, mode)
                and not (mode is EditMode.INPAINT and m.capabilities.image_to_image)
            ),
            None,
        )
        if lacking is None:
            continue
        size = size_for(lacking.capabilities, stack)
        req = edit_request(stack, lacking.id, mode, size)
        req.ClearField("strength")
        before = len(stack.harness.emulator.calls)
        err = await stack.fail(req)
        assert (err.code, err.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.PROVIDER_UNSUPPORTED_PARAMETER,
        ), (mode, lacking.id, err.message)
        assert stack.harness.emulator.calls[before:] == []


async def test_mask_of_another_size_is_refused_before_the_provider(stack: Stack) -> None:
    for mode, model in await declared_modes(stack):
        if mode is not EditMode.INPAINT:
            continue
        size = size_for(model.capabilities, stack)
        req = edit_request(stack, model.id, mode, size)
        req.mask = mask_png((size[0] // 2, size[1] // 2))
        err = await stack.fail(req)
        assert (err.code, err.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.INVALID_ARGUMENT,
        )
        assert "mask" in [v.field for v in err.field_violations]
        assert stack.harness.emulator.calls == []


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_edit_endpoint_faults_map_like_generation_faults(stack: Stack, kind: str) -> None:
    expect = stack.harness.expect(kind)
    timeout = SHORT_DEADLINE if expect.timeout_fault else DEADLINE
    for mode, model in await declared_modes(stack, every_model=False):
        size = size_for(model.capabilities, stack)
        req = edit_request(stack, model.id, mode, size)
        if not model.capabilities.strength:
            req.ClearField("strength")
        del req.reference_images[max(1, model.capabilities.max_reference_images) :]
        stack.harness.emulator.faults.set(Fault(kind, count=1, retry_after=RETRY_AFTER))
        if expect.code is None:
            resp = await stack.stub.GenerateImage(req, timeout=timeout)
            assert resp.images[0].format == image_pb2.IMAGE_FORMAT_PNG, mode
            continue
        started = time.monotonic()
        err = await stack.fail(req, timeout=timeout)
        assert (err.code, err.reason) == (expect.code, expect.reason), (mode, err.message)
        if expect.retry_info:
            assert err.retry_after_seconds == pytest.approx(RETRY_AFTER)
        if expect.timeout_fault:
            assert time.monotonic() - started < SHORT_DEADLINE + SLACK, "deadline not honoured"
        assert stack.harness.key not in err.message
        stack.harness.emulator.faults.clear()
