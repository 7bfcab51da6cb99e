"""The Node.js example (examples/node) against a real stack: its `node --test` suite must pass."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from imagegate.grpckit.channel import create_channel
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from tests.integration.conftest import RunningStack

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"


def _build() -> None:
    """`npm ci` and stub generation, as `make examples-node` does (skipped when already done)."""
    npm = shutil.which("npm")
    assert npm is not None, "Node 20 with npm is needed for examples/node"
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600
        )
    subprocess.run([npm, "run", "--silent", "gen"], cwd=NODE_DIR, check=True, timeout=300)


async def _free_key(running: RunningStack) -> str:
    admin = (("authorization", f"Bearer {running.admin_token}"),)
    async with create_channel(running.stack.address("quota")) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant = await stub.CreateTenant(
            quota_pb2.CreateTenantRequest(
                request_id=str(uuid.uuid4()), name=f"node-{uuid.uuid4().hex[:8]}", plan="free"
            ),
            metadata=admin,
            timeout=10,
        )
        key = await stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="node example"),
            metadata=admin,
            timeout=10,
        )
    return key.api_key


async def test_the_node_example_generates_streams_and_decodes_rich_errors(
    running_stack: RunningStack,
) -> None:
    await asyncio.to_thread(_build)
    env = {
        **os.environ,
        "IMAGEGATE_ROUTER_ADDR": running_stack.stack.address("router"),
        "IMAGEGATE_API_KEY": running_stack.api_key,
        "IMAGEGATE_FREE_API_KEY": await _free_key(running_stack),
    }
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=spec",
        "test/",
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=180)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "fail 0" in text or "✖" not in text, text
    assert "QuotaFailure" in text and "BadRequest" in text, text


async def test_the_node_command_writes_images_and_prints_progress_and_errors(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    await asyncio.to_thread(_build)
    env = {
        **os.environ,
        "IMAGEGATE_ROUTER_ADDR": running_stack.stack.address("router"),
        "IMAGEGATE_API_KEY": running_stack.api_key,
    }
    node = shutil.which("node")
    assert node is not None

    async def generate(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            node,
            "src/generate.js",
            *args,
            cwd=NODE_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    out_file = tmp_path / "fox.png"
    rc, out, err = await generate("a red fox", str(out_file), "--n", "2", "--size", "128x128")
    assert rc == 0, err
    assert (tmp_path / "fox-1.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox-2.png").exists()
    assert "accepted; candidates:" in err and "attempt 1: local" in err
    assert "provider local" in out
    rc, out, err = await generate("x", str(tmp_path / "bad.png"), "--size", "10x128")
    assert rc == 1
    assert err.startswith("error: INVALID_ARGUMENT") and "\n  field width: " in err
