"""Image-to-image end to end: the CLI, every service as a process, fal then Replicate emulated."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from imagegate.devstack.emulated import start_emulators
from imagegate.emulators.base import Emulator, Fault
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.security import transport_from_env
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from tests.integration.conftest import RunningStack, start_stack


@pytest.fixture(scope="module")
async def emulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningStack, dict[str, Emulator]]]:
    env: dict[str, str] = {}
    emulators = await start_emulators(env, ["fal", "replicate", "bfl"], latency=0.05)
    running = await start_stack(tmp_path_factory.mktemp("edits") / "data", **env)
    await _business_plan(running)
    yield running, emulators
    await running.stack.stop()
    for emulator in emulators.values():
        await emulator.stop()


async def _business_plan(running: RunningStack) -> None:
    """The dev tenant is on `pro` (no premium tier); the FLUX edit models are premium."""
    async with create_channel(running.stack.address("quota")) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        auth = await stub.AuthenticateApiKey(
            quota_pb2.AuthenticateApiKeyRequest(api_key=running.api_key),
            metadata=transport_from_env(running.env).outbound_metadata(),
            timeout=5,
        )
        await stub.SetTenantPlan(
            quota_pb2.SetTenantPlanRequest(tenant_id=auth.tenant.id, plan="business"),
            metadata=(("authorization", f"Bearer {running.admin_token}"),),
            timeout=5,
        )


async def _cli(running: RunningStack, *args: str) -> tuple[int, str, str]:
    env = dict(running.env)
    env["IMAGEGATE_ROUTER_ADDR"] = running.stack.address("router")
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "imagegate"),
        "generate",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


def _source(path: Path) -> Path:
    img = Image.new("RGB", (640, 480), (30, 80, 160))
    ImageDraw.Draw(img).ellipse([100, 100, 300, 300], fill=(230, 200, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


async def test_cli_image_to_image_fails_over_from_fal_to_replicate(emulated, tmp_path) -> None:
    running, emulators = emulated
    source = _source(tmp_path / "in.png")
    args = ("a castle at dusk", "--image", str(source), "--strength", "0.6", "--json", "--quiet")
    code, out, err = await _cli(running, *args, "-o", str(tmp_path / "one.png"))
    assert code == 0, err
    first = json.loads(out)
    assert first["provider_model"] == "fal-ai/flux/dev/image-to-image"
    # No size given: the input's aspect ratio at most 1 MP, sides a multiple of 32.
    assert Image.open(tmp_path / "one.png").size == (640, 480)
    assert int(first["cost_micros"]) > 0

    emulators["fal"].faults.set(Fault("error_503"))
    code, out, err = await _cli(running, *args, "-o", str(tmp_path / "two.png"))
    emulators["fal"].faults.clear()
    assert code == 0, err
    second = json.loads(out)
    assert second["provider_model"] == "stability-ai/sdxl"
    assert [(a["provider"], a["outcome"]) for a in second["attempts"]] == [
        ("fal", "ATTEMPT_OUTCOME_UNAVAILABLE"),
        ("replicate", "ATTEMPT_OUTCOME_SUCCEEDED"),
    ]
    assert emulators["bfl"].calls == [], "BFL declares no image-to-image model"


async def test_cli_refuses_an_oversized_image_before_the_router(emulated, tmp_path) -> None:
    running, emulators = emulated
    big = tmp_path / "big.png"
    big.write_bytes(_source(tmp_path / "src.png").read_bytes() + b"\0" * (11 * 1024 * 1024))
    before = {name: len(e.calls) for name, e in emulators.items()}
    code, _, err = await _cli(running, "x", "--image", str(big), "-o", str(tmp_path / "o.png"))
    assert code == 2 and "argument --image" in err
    assert {name: len(e.calls) for name, e in emulators.items()} == before
