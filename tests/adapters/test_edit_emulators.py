"""The emulators' edit endpoints validate like their providers: formats, sizes, mask size, no URLs."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegate.emulators.base import Emulator
from imagegate.emulators.bfl import BflEmulator
from imagegate.emulators.fal import FalEmulator
from imagegate.emulators.openai import OpenAIEmulator
from imagegate.emulators.replicate import SDXL_VERSION, ReplicateEmulator
from imagegate.emulators.together import TogetherEmulator
from imagegate.inputs.encoding import data_uri, multipart

GIF = b"GIF89a" + b"\0" * 64


def png(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


Post = Callable[[httpx.AsyncClient, dict[str, Any]], Any]


async def _openai(client: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    files = [("image[]", "a.png", case["image"])]
    if case.get("mask") is not None:
        files.append(("mask", "m.png", case["mask"]))
    content, ctype = multipart({"model": "gpt-image-1", "prompt": "x", "size": "1024x1024"}, files)
    return await client.post(
        "/v1/images/edits",
        content=content,
        headers={"content-type": ctype, "authorization": "Bearer k"},
    )


async def _bfl(client: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    body: dict[str, Any] = {"prompt": "x", "image": case["image_field"](case["image"])}
    if case.get("mask") is not None:
        body["mask"] = case["image_field"](case["mask"])
    return await client.post("/v1/flux-pro-1.0-fill", json=body, headers={"x-key": "k"})


async def _fal(client: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    body: dict[str, Any] = {"prompt": "x", "image_url": case["uri_field"](case["image"])}
    if case.get("mask") is not None:
        body["mask_url"] = case["uri_field"](case["mask"])
    else:
        body["mask_url"] = case["uri_field"](case["image"])
    return await client.post(
        "/fal-ai/flux-pro/v1/fill", json=body, headers={"authorization": "Key k"}
    )


async def _replicate(client: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    inp: dict[str, Any] = {"prompt": "x", "image": case["uri_field"](case["image"])}
    if case.get("mask") is not None:
        inp["mask"] = case["uri_field"](case["mask"])
    return await client.post(
        "/v1/predictions",
        json={"version": SDXL_VERSION, "input": inp},
        headers={"authorization": "Bearer k"},
    )


async def _together(client: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    body = {
        "model": "black-forest-labs/FLUX.1-kontext-pro",
        "prompt": "x",
        "image_url": case["uri_field"](case["image"]),
        "response_format": "base64",
    }
    return await client.post(
        "/v1/images/generations", json=body, headers={"authorization": "Bearer k"}
    )


EMULATORS: dict[str, tuple[type[Emulator], Post, bool]] = {
    # name: (emulator, post, checks a mask)
    "openai": (OpenAIEmulator, _openai, True),
    "bfl": (BflEmulator, _bfl, True),
    "fal": (FalEmulator, _fal, True),
    "replicate": (ReplicateEmulator, _replicate, True),
    "together": (TogetherEmulator, _together, False),
}


@pytest.fixture(params=sorted(EMULATORS))
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    cls, _, _ = EMULATORS[request.param]
    emu = cls()
    base = await emu.start()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield request.param, client
    await emu.stop()


def _case(**kw: Any) -> dict[str, Any]:
    return {"image_field": b64, "uri_field": data_uri, **kw}


async def test_a_valid_edit_is_accepted(emulator: tuple[str, httpx.AsyncClient]) -> None:
    name, client = emulator
    mask = png(mode="RGBA") if name == "openai" else png(mode="L")
    resp = await EMULATORS[name][1](client, _case(image=png(), mask=mask))
    assert resp.status_code in (200, 201), resp.text


async def test_an_unsupported_format_is_refused(emulator: tuple[str, httpx.AsyncClient]) -> None:
    name, client = emulator
    resp = await EMULATORS[name][1](client, _case(image=GIF))
    assert 400 <= resp.status_code < 500, resp.text


async def test_a_mask_of_another_size_is_refused(emulator: tuple[str, httpx.AsyncClient]) -> None:
    name, client = emulator
    if not EMULATORS[name][2]:
        return
    mask = png((32, 32), "RGBA" if name == "openai" else "L")
    resp = await EMULATORS[name][1](client, _case(image=png(), mask=mask))
    assert 400 <= resp.status_code < 500, resp.text
    assert "mask" in resp.text.lower()


async def test_a_url_input_is_never_fetched(emulator: tuple[str, httpx.AsyncClient]) -> None:
    name, client = emulator
    if name == "openai":
        return  # multipart only: there is no URL field to send
    url = "http://169.254.169.254/latest/meta-data"
    resp = await EMULATORS[name][1](
        client, _case(image=png(), image_field=lambda _: url, uri_field=lambda _: url)
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert "not emulated" in resp.text
