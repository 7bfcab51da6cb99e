"""Issue 4's promise end to end: flux-schnell via fal, then via Replicate when fal answers 503."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from imagegate.devstack.emulated import start_emulators
from imagegate.emulators.base import Emulator, Fault
from tests.integration.conftest import RunningStack, start_stack


@pytest.fixture(scope="module")
async def emulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningStack, dict[str, Emulator]]]:
    env: dict[str, str] = {}
    emulators = await start_emulators(env, ["fal", "replicate"], latency=0.05)
    running = await start_stack(tmp_path_factory.mktemp("emulated") / "data", **env)
    yield running, emulators
    await running.stack.stop()
    for emulator in emulators.values():
        await emulator.stop()


async def _generate(running: RunningStack, target) -> tuple[int, str, str]:
    env = dict(running.env)
    env["IMAGEGATE_ROUTER_ADDR"] = running.stack.address("router")
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "imagegate"),
        "generate",
        "a red fox in snow",
        "--model",
        "flux-schnell",
        "--size",
        "512x512",
        "-o",
        str(target),
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_flux_schnell_via_fal_then_replicate_when_fal_503s(emulated, tmp_path):
    import json

    running, emulators = emulated
    code, out, err = await _generate(running, tmp_path / "one.png")
    assert code == 0, err
    first = json.loads(out)
    assert first["provider"] == "fal"
    assert first["provider_model"] == "fal-ai/flux/schnell"
    assert [a["outcome"] for a in first["attempts"]] == ["ATTEMPT_OUTCOME_SUCCEEDED"]
    assert int(first["cost_micros"]) > 0
    assert Image.open(tmp_path / "one.png").size == (512, 512)

    emulators["fal"].faults.set(Fault("error_503"))
    code, out, err = await _generate(running, tmp_path / "two.png")
    assert code == 0, err
    second = json.loads(out)
    assert second["provider"] == "replicate"
    assert [(a["provider"], a["outcome"]) for a in second["attempts"]] == [
        ("fal", "ATTEMPT_OUTCOME_UNAVAILABLE"),
        ("replicate", "ATTEMPT_OUTCOME_SUCCEEDED"),
    ]
    assert second["attempts"][0]["error_reason"] == "PROVIDER_UNAVAILABLE"
    assert Image.open(tmp_path / "two.png").size == (512, 512)
