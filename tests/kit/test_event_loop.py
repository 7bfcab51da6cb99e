"""The services' event loop: uvloop unless the setting names the standard loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from imagegate.config import CommonSettings
from imagegate.grpckit.loop import run


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_services_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGATE_EVENT_LOOP", raising=False)
    assert run(_loop_type(), CommonSettings().event_loop) is uvloop.Loop


def test_the_standard_loop_is_one_setting_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_EVENT_LOOP", "asyncio")
    loop_type = run(_loop_type(), CommonSettings().event_loop)
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_an_unknown_loop_name_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        CommonSettings()
