"""Fixtures: a real Metering gRPC server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from imagegate.grpckit.channel import create_channel
from imagegate.metering.v1 import metering_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.metering.catalog import load_catalog
from services.metering.server import MeteringServer, start_metering_server
from services.metering.store import MeteringStore
from tests.persistence.clock import FakeClock
from tests.pg import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]


@dataclass
class MeteringEnv:
    """A running Metering service with its store, clock and a client stub."""

    server: MeteringServer
    store: MeteringStore
    clock: FakeClock
    stub: metering_pb2_grpc.MeteringServiceStub


@pytest.fixture
async def metering(database_url: str) -> AsyncIterator[MeteringEnv]:
    """Metering over gRPC on a fresh database (sqlite and postgresql), with a fake clock."""
    clock = FakeClock()
    store = MeteringStore.open(database_url, catalog=load_catalog(), clock=clock, threads=16)
    server = await start_metering_server(
        store, address="127.0.0.1:0", telemetry=setup_telemetry("metering-test")
    )
    channel = create_channel(server.address)
    try:
        yield MeteringEnv(server, store, clock, metering_pb2_grpc.MeteringServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(grace=0)
