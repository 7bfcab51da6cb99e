"""The dev stack as processes with --emulators' text providers: `imagegate generate "knight"
--style game-sprite --enhance` sends the enhanced prompt to the image provider and shows it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagegate.devstack.emulated import start_chat_emulators, start_emulators
from imagegate.emulators.base import Emulator
from tests.integration.conftest import RunningStack, start_stack

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
async def emulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningStack, dict[str, Emulator]]]:
    env: dict[str, str] = {}
    emulators = await start_emulators(env, ["fal"], latency=0.05)
    emulators.update(await start_chat_emulators(env))
    running = await start_stack(tmp_path_factory.mktemp("enhance") / "data", **env)
    yield running, emulators
    await running.stack.stop()
    for emulator in emulators.values():
        await emulator.stop()


async def _cli(running: RunningStack, *argv: str) -> tuple[int, str, str]:
    env = dict(running.env)
    env["IMAGEGATE_ROUTER_ADDR"] = running.stack.address("router")
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "imagegate"),
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_enhanced_prompt_travels_from_the_chat_emulator_to_fal(emulated, tmp_path: Path):
    running, emulators = emulated
    assert "enhancer" in [s.name for s in running.stack.specs]
    code, out, err = await _cli(
        running,
        "generate", "knight", "--style", "game-sprite", "--enhance",
        "--model", "flux-schnell", "-o", str(tmp_path / "k.png"), "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    enhancement = result["enhancement"]
    assert enhancement["status"] == "ENHANCEMENT_STATUS_APPLIED"
    assert enhancement["provider"] == "groq"
    assert int(enhancement["usage"]["output_tokens"]) > 0
    assert "highly detailed" in result["sent_prompt"]
    fal_prompts = [c.body["prompt"] for c in emulators["fal"].calls if c.method == "POST"]
    assert fal_prompts == [result["sent_prompt"]]
    assert len(emulators["groq"].calls) == 1

    code, out, err = await _cli(
        running,
        "generate", "knight", "--style", "game-sprite", "--enhance",
        "--model", "flux-schnell", "-o", str(tmp_path / "k2.png"),
    )  # fmt: skip
    assert code == 0, err
    assert "enhanced prompt (groq/llama-3.1-8b-instant, cached, no cost):" in out
    assert len(emulators["groq"].calls) == 1
