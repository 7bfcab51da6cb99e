"""Billing end to end: a free tenant gets exactly its 50 images; a Metering crash loses nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from imagegate.devstack.emulated import start_emulators
from imagegate.emulators.base import Emulator
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import RunningStack, start_stack


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _all_records(stub: router_pb2_grpc.RouterServiceStub, key: str):
    records, token = [], ""
    while True:
        page = await stub.ListUsageRecords(
            router_pb2.ListUsageRecordsRequest(page_size=500, page_token=token),
            metadata=_auth(key),
            timeout=10,
        )
        records.extend(page.records)
        token = page.next_page_token
        if not token:
            return records


@pytest.fixture(scope="module")
async def hf_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningStack, dict[str, Emulator]]]:
    env: dict[str, str] = {}
    emulators = await start_emulators(env, ["huggingface"], latency=0.0)
    running = await start_stack(tmp_path_factory.mktemp("billing") / "data", **env)
    yield running, emulators
    await running.stack.stop()
    for emulator in emulators.values():
        await emulator.stop()


async def _free_tenant_key(running: RunningStack) -> str:
    admin = (("authorization", f"Bearer {running.admin_token}"),)
    async with create_channel(running.stack.address("quota")) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        tenant = await stub.CreateTenant(
            quota_pb2.CreateTenantRequest(
                request_id=str(uuid.uuid4()), name=f"free-{uuid.uuid4().hex[:8]}", plan="free"
            ),
            metadata=admin,
            timeout=10,
        )
        key = await stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="e2e"),
            metadata=admin,
            timeout=10,
        )
    return key.api_key


async def test_free_tenant_gets_exactly_fifty_of_sixty(hf_stack):
    running, _ = hf_stack
    key = await _free_tenant_key(running)
    ok, exhausted, other = 0, [], []
    async with create_channel(running.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        gate = asyncio.Semaphore(12)

        async def one() -> None:
            nonlocal ok
            async with gate:
                try:
                    resp = await stub.GenerateImage(
                        router_pb2.GenerateImageRequest(
                            request_id=str(uuid.uuid4()),
                            prompt="a pixel-art potion bottle",
                            width=512,
                            height=512,
                        ),
                        metadata=_auth(key),
                        timeout=30,
                    )
                    assert len(resp.images) == 1
                    ok += 1
                except grpc.aio.AioRpcError as err:
                    parsed = parse_rpc_error(err)
                    (
                        exhausted if parsed.code == grpc.StatusCode.RESOURCE_EXHAUSTED else other
                    ).append(parsed)

        await asyncio.gather(*(one() for _ in range(60)))
        quota = (
            await stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=_auth(key), timeout=10)
        ).quota
        records = await _all_records(stub, key)
    assert other == []
    assert ok == 50
    assert len(exhausted) == 10
    assert all(p.reason == reasons.QUOTA_EXCEEDED and p.quota_violations for p in exhausted)
    assert "reset_time" in exhausted[0].metadata
    assert quota.used_images == 50 and quota.remaining_images == 0 and quota.reserved_images == 0
    succeeded = [r for r in records if r.outcome == metering_pb2.REQUEST_OUTCOME_SUCCEEDED]
    assert len(succeeded) == 50
    # Free tenants reach only budget models: Stable Diffusion on Hugging Face, priced per second.
    assert {r.provider for r in succeeded} == {"huggingface"}
    assert all(r.cost_micros > 0 for r in succeeded)


async def test_killing_metering_mid_run_loses_no_usage(hf_stack):
    running, _ = hf_stack
    done: list[str] = []
    async with create_channel(running.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def generate() -> None:
            request_id = str(uuid.uuid4())
            resp = await stub.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=request_id,
                    prompt="a lighthouse",
                    width=256,
                    height=256,
                    model="local",
                ),
                metadata=_auth(running.api_key),
                timeout=30,
            )
            assert len(resp.images) == 1
            done.append(request_id)

        for _ in range(5):
            await generate()
        await running.stack.kill("metering")
        for _ in range(8):
            await generate()
        await running.stack.respawn("metering")
        for _ in range(3):
            await generate()
        deadline = time.monotonic() + 45
        while True:
            records = await _all_records(stub, running.api_key)
            ids = [r.request_id for r in records if r.request_id in set(done)]
            if len(set(ids)) == len(done) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert len(done) == 16
    assert sorted(ids) == sorted(done), "every successful request is in the ledger exactly once"
