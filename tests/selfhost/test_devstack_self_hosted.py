"""`make run` starts self-hosted adapters when configured; the CLI gets an image from diffusers."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagegate.devstack.bootstrap import ensure_admin_token, ensure_dev_key
from imagegate.devstack.services import plan_stack
from imagegate.devstack.supervisor import Stack

PROVIDER_KEYS = (
    "FAL_KEY",
    "HF_TOKEN",
    "REPLICATE_API_TOKEN",
    "BFL_API_KEY",
    "OPENAI_API_KEY",
    "TOGETHER_API_KEY",
    "IMAGEGATE_DIFFUSERS_MODEL_PATH",
    "IMAGEGATE_COMFYUI_BASE_URL",
)


def test_self_hosted_adapters_start_only_when_configured() -> None:
    specs, env = plan_stack({})
    assert not {"diffusers", "comfyui"} & {s.name for s in specs}
    specs, env = plan_stack(
        {
            "IMAGEGATE_DIFFUSERS_MODEL_PATH": "/models/sd",
            "IMAGEGATE_COMFYUI_BASE_URL": "http://gpu:8188",
        }
    )
    names = [s.name for s in specs]
    assert {"diffusers", "comfyui"} <= set(names) and names[-1] == "router"
    adapters = dict(i.split("=", 1) for i in env["IMAGEGATE_ROUTER_ADAPTERS"].split(","))
    assert adapters["diffusers"] == "127.0.0.1:50067"
    assert adapters["comfyui"] == "127.0.0.1:50068"


# Every process of the stack, then torch and the weights: minutes on a busy machine.
@pytest.mark.timeout(300)
async def test_cli_generates_from_the_diffusers_process_of_a_real_stack(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEYS}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.update(
        IMAGEGATE_DATA_DIR=str(data_dir),
        IMAGEGATE_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        IMAGEGATE_DIFFUSERS_MODEL_PATH=str(tiny_model_dir),
        IMAGEGATE_DIFFUSERS_DEVICE="cpu",
    )
    admin = ensure_admin_token(data_dir, env)
    stack = Stack(env, auto_ports=True, out=None)
    try:
        # Torch and the weights load before the adapter listens.
        await stack.start(timeout=120)
        await ensure_dev_key(data_dir, stack.address("quota"), admin)
        cli_env = dict(stack.env)
        cli_env["IMAGEGATE_ROUTER_ADDR"] = stack.address("router")
        cli_env.pop("IMAGEGATE_API_KEY", None)
        target = tmp_path / "lighthouse.png"
        proc = await asyncio.create_subprocess_exec(
            os.path.join(os.path.dirname(sys.executable), "imagegate"),
            "generate",
            "a lighthouse at dusk",
            "--model",
            "sd-2.1",
            "--provider",
            "diffusers",
            "--size",
            "64x64",
            "--steps",
            "4",
            "-o",
            str(target),
            env=cli_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        assert "diffusers" in out.decode()
        with Image.open(io.BytesIO(target.read_bytes())) as img:
            img.load()
            assert img.size == (64, 64)
    finally:
        await stack.stop()
