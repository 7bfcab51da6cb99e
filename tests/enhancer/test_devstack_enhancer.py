"""`make run` starts the prompt enhancer only when a text provider key is set (or emulated)."""

from __future__ import annotations

from imagegate.devstack.emulated import start_chat_emulators
from imagegate.devstack.services import plan_stack


def _names(env: dict[str, str]) -> list[str]:
    return [s.name for s in plan_stack(env)[0]]


def test_no_text_key_starts_no_enhancer_and_the_router_dials_none() -> None:
    specs, env = plan_stack({"IMAGEGATE_ENHANCER_ADDR": "127.0.0.1:59999"})
    assert "enhancer" not in [s.name for s in specs]
    assert "IMAGEGATE_ENHANCER_ADDR" not in env


def test_any_text_key_starts_the_enhancer_before_the_router() -> None:
    names = _names({"CEREBRAS_API_KEY": "csk-x"})
    assert names.index("enhancer") < names.index("router")
    _, env = plan_stack({"GROQ_API_KEY": "gsk-x"})
    assert env["IMAGEGATE_ENHANCER_ADDR"] == "127.0.0.1:50070"


async def test_emulated_text_providers_enable_the_enhancer_against_the_chat_emulators() -> None:
    env: dict[str, str] = {}
    emulators = await start_chat_emulators(env)
    try:
        assert set(emulators) == {"groq", "cerebras"}
        assert env["IMAGEGATE_ENHANCER_BASE_URLS"] == ",".join(
            f"{n}={emulators[n].base_url}/v1" for n in ("groq", "cerebras")
        )
        assert "enhancer" in _names(env)
    finally:
        for emulator in emulators.values():
            await emulator.stop()
