"""Opt-in pre-forked Router workers: two processes serve one port, each as its own replica."""

from __future__ import annotations

import uuid

import grpc
import pytest

from imagegate.grpckit.options import SERVER_OPTIONS, reuse_port_options
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import start_stack

# New connections per round: the kernel spreads connections (not calls) over the workers.
CONNECTIONS = 8
ROUNDS = 25


def test_only_workers_share_a_port() -> None:
    assert ("grpc.so_reuseport", 0) in SERVER_OPTIONS
    assert ("grpc.so_reuseport", 1) in reuse_port_options()
    assert ("grpc.so_reuseport", 0) not in reuse_port_options()


async def test_two_workers_serve_one_port_as_two_replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = tmp_path_factory.mktemp("workers") / "data"
    running = await start_stack(data, IMAGEGATE_ROUTER_WORKERS="2")
    try:
        address = running.stack.address("router")
        auth = (("authorization", f"Bearer {running.api_key}"),)
        served_by: set[str] = set()
        for _ in range(ROUNDS):
            for i in range(CONNECTIONS):
                async with grpc.aio.insecure_channel(
                    address, options=[("test.connection", uuid.uuid4().hex)]
                ) as channel:
                    call = router_pb2_grpc.RouterServiceStub(channel).GenerateImage(
                        router_pb2.GenerateImageRequest(
                            request_id=f"workers-{uuid.uuid4().hex}",
                            prompt=f"a fox {i}",
                            model="local",
                            width=64,
                            height=64,
                        ),
                        metadata=auth,
                        timeout=30,
                    )
                    response = await call
                    assert response.images
                    trailers = dict(await call.trailing_metadata() or ())
                    served_by.add(str(trailers["x-imagegate-replica-id"]))
            if len(served_by) == 2:
                break
        assert len(served_by) == 2, served_by
        assert sorted(r.rsplit("-", 1)[1] for r in served_by) == ["w0", "w1"]
        # Each worker keeps its own settlement outbox (docs/replicas-and-state.md).
        assert (data / "router-outbox-w0.sqlite3").exists()
        assert (data / "router-outbox-w1.sqlite3").exists()
    finally:
        await running.stack.stop()
