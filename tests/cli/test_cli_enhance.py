"""`imagegate generate "knight" --style game-sprite --enhance` shows the enhanced prompt and its cost."""

from __future__ import annotations

import pytest

from imagegate.cli.args import parse
from imagegate.cli.connection import Connection
from imagegate.cli.generate import build_request, cmd_generate
from imagegate.emulators.base import Fault
from tests.fixtures.enhance_world import STYLED, start_world

pytestmark = pytest.mark.timeout(90)


def test_enhance_flags_set_or_leave_the_request_field() -> None:
    assert build_request(parse(["estimate", "knight", "--enhance"])).enhance_prompt is True
    off = build_request(parse(["estimate", "knight", "--no-enhance"]))
    assert off.HasField("enhance_prompt") and off.enhance_prompt is False
    assert not build_request(parse(["estimate", "knight"])).HasField("enhance_prompt")


async def test_generate_with_enhance_prints_the_enhanced_prompt_and_its_cost(
    tmp_path, monkeypatch, capsys
) -> None:
    world = await start_world()
    try:
        monkeypatch.setenv("IMAGEGATE_API_KEY", "key-pro")
        conn = Connection(world.router.router.address, "127.0.0.1:1", "127.0.0.1:1", tmp_path)
        argv = [
            "generate",
            "knight",
            "--style",
            "game-sprite",
            "--enhance",
            "--model",
            "flux-schnell",
            "-o",
            str(tmp_path / "knight.png"),
            "--quiet",
        ]
        assert await cmd_generate(parse(argv), conn) == 0
        out = capsys.readouterr().out
        assert "enhanced prompt (groq/llama-3.1-8b-instant, " in out
        assert " tokens, $0.0000" in out
        assert "knight, highly detailed" in out
        assert "negative: blurry, cropped" in out

        for emulator in world.enhancer.emulators.values():  # type: ignore[union-attr]
            emulator.faults.set(Fault("error_503"))
        argv[1] = "wizard"
        assert await cmd_generate(parse(argv), conn) == 0
        out = capsys.readouterr().out
        assert (
            "prompt not enhanced (unavailable: enhancer unavailable: ENHANCER_UNAVAILABLE)" in out
        )
        assert STYLED.replace("knight", "wizard") in out
        assert "note: prompt enhancement skipped" in out
    finally:
        await world.stop()
