"""Settler: real Quota and Metering servers on loopback; Metering is stopped mid-run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select

from imagegate.common.v1 import image_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.settlement import Settlement, Settler
from imagegate.telemetry import setup_telemetry
from services.metering.catalog import load_catalog
from services.metering.models import UsageRecordRow
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore, ReserveArgs


def _record(tenant_id: str, request_id: str) -> metering_pb2.RecordUsageRequest:
    return metering_pb2.RecordUsageRequest(
        request_id=request_id,
        tenant_id=tenant_id,
        model="flux-schnell",
        outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
        occurred_at=timestamp_pb2.Timestamp(seconds=int(datetime.now(UTC).timestamp())),
        attempts=[
            metering_pb2.BilledAttempt(
                provider="fal",
                provider_model="fal-ai/flux/schnell",
                attempt_number=1,
                succeeded=True,
                usage=image_pb2.Usage(images=1, megapixels=0.786432),
            )
        ],
    )


async def _eventually(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("with_restart_of_router", [False, True])
async def test_metering_outage_loses_nothing_and_counts_once(
    database_url: str, tmp_path: Path, with_restart_of_router: bool
) -> None:
    telemetry = setup_telemetry("settle-test")
    quota_store = QuotaStore.open(f"sqlite:///{tmp_path / 'q.db'}", plans=load_plans())
    quota_server = await start_quota_server(
        quota_store,
        address="127.0.0.1:0",
        admin_token="x",
        telemetry=telemetry,
        sweep_interval=None,
    )
    metering_store = MeteringStore.open(database_url, catalog=load_catalog())
    metering_server = await start_metering_server(
        metering_store, address="127.0.0.1:0", telemetry=telemetry
    )
    port = metering_server.running.port
    q_channel = create_channel(quota_server.address)
    m_channel = create_channel(f"127.0.0.1:{port}")
    outbox = tmp_path / "outbox.db"

    def settler() -> Settler:
        return Settler(
            quota=quota_pb2_grpc.QuotaServiceStub(q_channel),
            metering=metering_pb2_grpc.MeteringServiceStub(m_channel),
            outbox_path=outbox,
            retry_interval=0.05,
        )

    s = settler()
    await s.start()
    tenant = await quota_store.create_tenant(request_id="t", name="acme", plan="pro")
    expected: list[str] = []
    delivered_now = 0
    try:
        for i in range(30):
            if i == 10:
                await metering_server.stop(grace=0, close_store=False)
            if i == 20 and with_restart_of_router:
                await s.close()  # a Router restart while parts are still parked
                s = settler()
                await s.start()
            request_id = f"req-{i}"
            res = await quota_store.reserve(
                ReserveArgs(request_id=request_id, tenant_id=tenant.id, images=1)
            )
            record = await s.settle(
                Settlement(
                    reservation_id=res.reservation.id,
                    commit=quota_pb2.CommitReservationRequest(images=1, megapixels=0.786432),
                    record=_record(tenant.id, request_id),
                ),
                timeout=1.0,
            )
            expected.append(request_id)
            delivered_now += record is not None
        assert delivered_now == 10
        assert s.pending() == 20  # the 20 records written while Metering was down
        metering_server = await start_metering_server(
            metering_store, address=f"127.0.0.1:{port}", telemetry=telemetry
        )
        await _eventually(lambda: s.pending() == 0)
        with metering_store.engine.connect() as conn:
            rows = conn.execute(
                select(UsageRecordRow.request_id, func.count()).group_by(UsageRecordRow.request_id)
            ).all()
        assert sorted(r[0] for r in rows) == sorted(expected)
        assert all(r[1] == 1 for r in rows)
        quota_status = await quota_store.get_quota(tenant.id)
        assert quota_status.used_images == 30 and quota_status.reserved_images == 0
        assert await s.dead_letters() == 0
    finally:
        await s.close()
        await q_channel.close()
        await m_channel.close()
        await metering_server.stop(grace=0)
        await quota_server.stop(grace=0)


async def test_quota_outage_parks_the_commit_and_release(tmp_path: Path) -> None:
    telemetry = setup_telemetry("settle-test")
    store = QuotaStore.open(f"sqlite:///{tmp_path / 'q.db'}", plans=load_plans())
    server = await start_quota_server(
        store, address="127.0.0.1:0", admin_token="x", telemetry=telemetry, sweep_interval=None
    )
    port = server.running.port
    channel = create_channel(server.address)
    unused = create_channel("127.0.0.1:1")
    s = Settler(
        quota=quota_pb2_grpc.QuotaServiceStub(channel),
        metering=metering_pb2_grpc.MeteringServiceStub(unused),
        outbox_path=tmp_path / "outbox.db",
        retry_interval=0.05,
    )
    await s.start()
    tenant = await store.create_tenant(request_id="t", name="acme", plan="free")
    a = await store.reserve(ReserveArgs(request_id="a", tenant_id=tenant.id, images=2))
    b = await store.reserve(ReserveArgs(request_id="b", tenant_id=tenant.id, images=1))
    await server.stop(grace=0)
    store2 = QuotaStore(store.engine, store.plans)
    try:
        commit = quota_pb2.CommitReservationRequest(images=1)
        assert await s.settle(Settlement(a.reservation.id, commit, None), timeout=0.5) is None
        assert await s.settle(Settlement(b.reservation.id, None, None), timeout=0.5) is None
        assert s.pending() == 2
        server = await start_quota_server(
            store2,
            address=f"127.0.0.1:{port}",
            admin_token="x",
            telemetry=telemetry,
            sweep_interval=None,
        )
        await _eventually(lambda: s.pending() == 0)
        status = await store2.get_quota(tenant.id)
        assert (status.used_images, status.reserved_images) == (1, 0)
    finally:
        await s.close()
        await channel.close()
        await unused.close()
        await server.stop(grace=0)


async def test_refused_part_becomes_a_dead_letter(tmp_path: Path) -> None:
    telemetry = setup_telemetry("settle-test")
    store = MeteringStore.open(f"sqlite:///{tmp_path / 'm.db'}", catalog=load_catalog())
    server = await start_metering_server(store, address="127.0.0.1:0", telemetry=telemetry)
    channel = create_channel(server.address)
    s = Settler(
        quota=quota_pb2_grpc.QuotaServiceStub(channel),
        metering=metering_pb2_grpc.MeteringServiceStub(channel),
        outbox_path=tmp_path / "outbox.db",
        retry_interval=0.05,
    )
    await s.start()
    try:
        bad = _record("t1", "r1")
        bad.attempts[0].provider_model = "no-such-model"
        assert await s.settle(Settlement("", None, bad), timeout=2.0) is None
        assert s.pending() == 0
        assert await s.dead_letters() == 1
        good = await s.settle(Settlement("", None, _record("t1", "r2")), timeout=2.0)
        assert good is not None and good.cost_micros == 3000
    finally:
        await s.close()
        await channel.close()
        await server.stop(grace=0)
    _ = grpc
