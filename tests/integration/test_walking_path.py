"""The walking path end to end: key -> Router -> Quota -> local adapter -> Metering -> commit."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import uuid

import grpc
import pytest
from PIL import Image

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import RunningStack


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _quota(stub: router_pb2_grpc.RouterServiceStub, key: str):
    return (
        await stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=_auth(key), timeout=10)
    ).quota


async def test_generate_records_usage_and_moves_quota_by_one(running_stack: RunningStack):
    async with create_channel(running_stack.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        before = await _quota(stub, running_stack.api_key)
        request_id = str(uuid.uuid4())
        resp = await stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id=request_id,
                prompt="isometric treasure chest, game asset",
                width=512,
                height=512,
                output_format=image_pb2.IMAGE_FORMAT_PNG,
            ),
            metadata=_auth(running_stack.api_key),
            timeout=30,
        )
        after = await _quota(stub, running_stack.api_key)
        records = await stub.ListUsageRecords(
            router_pb2.ListUsageRecordsRequest(page_size=500),
            metadata=_auth(running_stack.api_key),
            timeout=10,
        )
    assert len(resp.images) == 1
    decoded = Image.open(io.BytesIO(resp.images[0].data))
    assert decoded.format == "PNG" and decoded.size == (512, 512)
    assert resp.provider == "local" and resp.local_substitute
    assert resp.request_id == request_id
    assert len(resp.trace_id) == 32
    assert [a.outcome for a in resp.attempts] == [router_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    assert after.used_images == before.used_images + 1
    assert after.reserved_images == 0
    mine = [r for r in records.records if r.request_id == request_id]
    assert len(mine) == 1
    assert mine[0].images == 1 and mine[0].provider == "local"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"num_images": 5}, "num_images"),
        ({"width": 0, "height": 0}, "width"),
        ({"width": 100000, "height": 100000}, "width"),
        ({"model": "no-such-model"}, "model"),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violation(
    running_stack: RunningStack, change: dict, field: str
):
    fields = {"prompt": "a fox", "width": 256, "height": 256, **change}
    async with create_channel(running_stack.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(
                router_pb2.GenerateImageRequest(**fields),
                metadata=_auth(running_stack.api_key),
                timeout=10,
            )
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed.reason in (reasons.INVALID_ARGUMENT, reasons.UNKNOWN_MODEL)
    assert any(v.field.startswith(field) for v in parsed.field_violations), parsed.field_violations


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer ig_nope_nope"),)])
async def test_missing_or_bad_key_is_unauthenticated(running_stack: RunningStack, metadata):
    async with create_channel(running_stack.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(
                router_pb2.GenerateImageRequest(prompt="a fox", width=256, height=256),
                metadata=metadata,
                timeout=10,
            )
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason in (reasons.API_KEY_MISSING, reasons.API_KEY_INVALID)
    assert "ig_nope" not in parsed.message


async def _cli(running_stack: RunningStack, *args: str) -> tuple[int, str, str]:
    env = dict(running_stack.env)
    env["IMAGEGATE_ROUTER_ADDR"] = running_stack.stack.address("router")
    env["IMAGEGATE_QUOTA_ADDR"] = running_stack.stack.address("quota")
    env.pop("IMAGEGATE_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "imagegate"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_generate_usage_and_quota(running_stack: RunningStack, tmp_path):
    target = tmp_path / "chest.png"
    code, out, err = await _cli(
        running_stack,
        "generate",
        "isometric treasure chest, game asset",
        "--size",
        "512x512",
        "-o",
        str(target),
    )
    assert code == 0, err
    assert Image.open(target).size == (512, 512)
    assert "provider local" in out
    code, out, _ = await _cli(running_stack, "usage", "--format", "csv")
    assert code == 0
    assert out.splitlines()[0].startswith("time,request_id,model,provider")
    assert any(",local," in line for line in out.splitlines()[1:])
    code, out, _ = await _cli(running_stack, "quota")
    assert code == 0 and "used" in out


async def test_cli_error_prints_reason_not_traceback(running_stack: RunningStack, tmp_path):
    # The model list is the server's to know; flags with fixed limits never reach it (tests/cli).
    code, out, err = await _cli(
        running_stack, "generate", "x", "--model", "no-such-model", "-o", str(tmp_path / "x.png")
    )
    assert code == 1
    assert "INVALID_ARGUMENT UNKNOWN_MODEL" in err and "field model" in err
    assert "Traceback" not in err + out
