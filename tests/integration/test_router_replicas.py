"""Two Router replicas on one Quota and one Metering: one generation per request_id, anywhere.

Real processes: a whole stack (Quota, Metering, adapters, Router) plus a second Router process
with its own data directory (outbox), both on one shared result store directory; fal is played
by its in-repo emulator, whose own request count proves how often the provider was called.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from imagegate.devstack.emulated import start_emulators
from imagegate.devstack.services import free_port
from imagegate.emulators.base import Emulator
from imagegate.grpckit.channel import create_channel
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import RunningStack, start_stack

FAL_SUBMIT = "fal-ai/flux/schnell"


class Replica:
    """A second Router process sharing the stack's Quota, Metering, adapters and result store."""

    def __init__(self, running: RunningStack, data_dir: Path) -> None:
        self.env = dict(running.env)
        self.env.update(
            IMAGEGATE_ROUTER_ADDR=f"127.0.0.1:{free_port()}",
            IMAGEGATE_ROUTER_METRICS_ADDR=f"127.0.0.1:{free_port()}",
            IMAGEGATE_DATA_DIR=str(data_dir),
            IMAGEGATE_ROUTER_REPLICA_ID="replica-b",
        )
        self.address = self.env["IMAGEGATE_ROUTER_ADDR"]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.router",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with create_channel(self.address) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=60)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningStack, Replica, Emulator]]:
    root = tmp_path_factory.mktemp(f"replicas-{request.param}")
    env: dict[str, str] = {"IMAGEGATE_ROUTER_RESULTS": str(root / "results")}
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        env["QUOTA_DATABASE_URL"] = server.create_database()
        env["METERING_DATABASE_URL"] = server.create_database()
    emulators = await start_emulators(env, ["fal"], latency=0.4)
    running = await start_stack(root / "a", **env)
    second = Replica(running, root / "b")
    await second.start()
    yield running, second, emulators["fal"]
    if second.process is not None and second.process.returncode is None:
        await second.kill()
    await running.stack.stop()
    await emulators["fal"].stop()


def _request(request_id: str) -> router_pb2.GenerateImageRequest:
    return router_pb2.GenerateImageRequest(
        prompt="a lighthouse",
        model="flux-schnell",
        width=256,
        height=256,
        request_id=request_id,
        allowed_providers=["fal"],
    )


async def _generate(address: str, key: str, request_id: str) -> router_pb2.GenerateImageResponse:
    async with create_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        return await stub.GenerateImage(
            _request(request_id), metadata=(("authorization", f"Bearer {key}"),), timeout=30
        )


async def test_concurrent_duplicates_on_two_replicas_call_the_provider_once(replicas) -> None:
    running, second, fal = replicas
    key, first = running.api_key, running.stack.address("router")
    before = len(fal.calls_to(FAL_SUBMIT, "POST"))
    answers = await asyncio.gather(
        *(_generate(addr, key, "dup-1") for addr in (first, second.address, first, second.address))
    )
    assert len(fal.calls_to(FAL_SUBMIT, "POST")) - before == 1
    images = {a.images[0].data for a in answers}
    assert len(images) == 1 and all(a.images[0].data for a in answers)
    assert {(a.provider, a.model, a.cost_micros, len(a.attempts)) for a in answers} == {
        (answers[0].provider, answers[0].model, answers[0].cost_micros, len(answers[0].attempts))
    }
    async with create_channel(first) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        auth = (("authorization", f"Bearer {key}"),)
        records = await stub.ListUsageRecords(
            router_pb2.ListUsageRecordsRequest(page_size=500), metadata=auth, timeout=10
        )
        assert [r.request_id for r in records.records].count("dup-1") == 1
        got = await stub.GetGeneration(
            router_pb2.GetGenerationRequest(request_id="dup-1"), metadata=auth, timeout=10
        )
        assert got.generation.images[0].data == answers[0].images[0].data
        # The replica id is operator detail: the admin token sees it.
        admin = (("authorization", f"Bearer {running.admin_token}"),)
        status = await stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=admin, timeout=10
        )
        assert status.replica_id and status.replica_id != "replica-b"


async def test_a_restarted_replica_replays_a_finished_request_from_the_result_store(
    replicas,
) -> None:
    running, second, fal = replicas
    key = running.api_key
    first = await _generate(second.address, key, "restart-1")
    calls = len(fal.calls_to(FAL_SUBMIT, "POST"))
    # The result is stored just after the reply; kill -9 only once it is there.
    async with create_channel(second.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        auth = (("authorization", f"Bearer {key}"),)
        for _ in range(100):
            try:
                await stub.GetGeneration(
                    router_pb2.GetGenerationRequest(request_id="restart-1"), metadata=auth
                )
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
    await second.kill()
    await second.start()
    again = await _generate(second.address, key, "restart-1")
    assert len(fal.calls_to(FAL_SUBMIT, "POST")) == calls
    assert again.images[0].data == first.images[0].data
    assert again.cost_micros == first.cost_micros and again.trace_id == first.trace_id


async def test_get_generation_of_an_unknown_request_id_is_not_found(replicas) -> None:
    running, _, _ = replicas
    async with create_channel(running.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetGeneration(
                router_pb2.GetGenerationRequest(request_id="never-ran"),
                metadata=(("authorization", f"Bearer {running.api_key}"),),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_replica_killed_mid_request_leaves_no_hold_once_it_restarts(replicas) -> None:
    running, second, fal = replicas
    key = running.api_key
    auth = (("authorization", f"Bearer {key}"),)
    async with create_channel(running.stack.address("router")) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def reserved() -> int:
            resp = await stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=auth, timeout=10)
            return resp.quota.reserved_images

        assert await reserved() == 0
        calls = len(fal.calls_to(FAL_SUBMIT, "POST"))
        victim = asyncio.ensure_future(_generate(second.address, key, "killed-1"))
        for _ in range(200):  # until the provider has the job (0.4 s emulator latency)
            if len(fal.calls_to(FAL_SUBMIT, "POST")) > calls:
                break
            await asyncio.sleep(0.01)
        await second.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await victim
        assert await reserved() == 1, "the killed request's hold is still there"
        await second.start()
        for _ in range(100):
            if await reserved() == 0:
                break
            await asyncio.sleep(0.05)
        assert await reserved() == 0, "the restarted replica did not release its old claim"
        # The id is spent, not run again (the provider was called once) nor charged.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _generate(second.address, key, "killed-1")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert len(fal.calls_to(FAL_SUBMIT, "POST")) == calls + 1
        records = await stub.ListUsageRecords(
            router_pb2.ListUsageRecordsRequest(page_size=500), metadata=auth, timeout=10
        )
        assert "killed-1" not in [r.request_id for r in records.records]


async def test_a_request_id_reused_with_another_body_on_another_replica_is_refused(
    replicas,
) -> None:
    running, second, _ = replicas
    key = running.api_key
    await _generate(running.stack.address("router"), key, "reuse-1")
    other = _request("reuse-1")
    other.prompt = "a different lighthouse"
    async with create_channel(second.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateImage(
                other, metadata=(("authorization", f"Bearer {key}"),), timeout=30
            )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
