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


class _Counting:
    """A stub wrapper counting the RPCs sent through it, by method name."""

    def __init__(self, stub: object) -> None:
        self._stub = stub
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        method = getattr(self._stub, name)

        def call(*args: object, **kwargs: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call


async def test_pending_parts_go_out_in_batches_and_a_refused_item_is_buried_alone(
    database_url: str, tmp_path: Path
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
    quota = _Counting(quota_pb2_grpc.QuotaServiceStub(q_channel))
    metering = _Counting(metering_pb2_grpc.MeteringServiceStub(m_channel))
    s = Settler(
        quota=quota,  # type: ignore[arg-type]
        metering=metering,  # type: ignore[arg-type]
        outbox_path=tmp_path / "outbox.db",
        retry_interval=0.05,
    )
    await s.start()
    tenant = await quota_store.create_tenant(request_id="t", name="acme", plan="pro")
    n = 40
    try:

        async def one(i: int) -> None:
            res = await quota_store.reserve(
                ReserveArgs(request_id=f"req-{i}", tenant_id=tenant.id, images=1)
            )
            record = _record(tenant.id, f"req-{i}")
            if i == 7:
                record.attempts[0].provider_model = "no-such-model"  # refused for good
            await s.settle_in_background(
                Settlement(
                    reservation_id=res.reservation.id,
                    commit=quota_pb2.CommitReservationRequest(images=1, megapixels=0.786432),
                    record=record,
                ),
                key=tenant.id,
                timeout=2.0,
            )

        # 1) N settlements written at once: delivered in fewer than N calls per receiver.
        await asyncio.gather(*(one(i) for i in range(n)))
        assert await s.wait_settled(tenant.id, 10.0)
        assert s.pending() == 0 and await s.dead_letters() == 1
        assert quota.calls["BatchCommitReservations"] >= 1
        assert metering.calls["BatchRecordUsage"] >= 1
        assert sum(quota.calls.values()) < n and sum(metering.calls.values()) < n
        with metering_store.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one()
        assert stored == n - 1
        status = await quota_store.get_quota(tenant.id)
        assert (status.used_images, status.reserved_images) == (n, 0)

        # 2) N records parked while Metering is down: the replay sends them in fewer calls.
        await metering_server.stop(grace=0, close_store=False)
        metering.calls.clear()
        await asyncio.gather(*(one(i) for i in range(n, 2 * n)))
        assert await s.wait_settled(tenant.id, 10.0)
        assert s.pending() == n  # the records, parked for retry
        metering_server = await start_metering_server(
            metering_store, address=f"127.0.0.1:{port}", telemetry=telemetry
        )
        calls_before = sum(metering.calls.values())
        await _eventually(lambda: s.pending() == 0)
        assert sum(metering.calls.values()) - calls_before < n
        with metering_store.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one()
        assert stored == 2 * n - 1
        assert await s.dead_letters() == 1
    finally:
        await s.close()
        await q_channel.close()
        await m_channel.close()
        await metering_server.stop(grace=0)
        await quota_server.stop(grace=0)


async def test_receiver_without_batch_rpc_gets_single_calls(tmp_path: Path) -> None:
    """An older Metering (no BatchRecordUsage: UNIMPLEMENTED) still gets every record, once."""
    from services.metering.servicer import MeteringServicer

    store = MeteringStore.open(f"sqlite:///{tmp_path / 'm.db'}", catalog=load_catalog())
    servicer = MeteringServicer(store)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "imagegate.metering.v1.MeteringService",
                {
                    "RecordUsage": grpc.unary_unary_rpc_method_handler(
                        servicer.RecordUsage,
                        request_deserializer=metering_pb2.RecordUsageRequest.FromString,
                        response_serializer=metering_pb2.RecordUsageResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    metering = _Counting(metering_pb2_grpc.MeteringServiceStub(channel))
    s = Settler(
        quota=quota_pb2_grpc.QuotaServiceStub(channel),
        metering=metering,  # type: ignore[arg-type]
        outbox_path=tmp_path / "outbox.db",
        retry_interval=0.05,
    )
    await s.start()
    try:
        for round_ in range(2):
            await asyncio.gather(
                *(
                    s.settle_in_background(
                        Settlement("", None, _record("t1", f"r{round_}-{i}")),
                        key="t1",
                        timeout=2.0,
                    )
                    for i in range(10)
                )
            )
            assert await s.wait_settled("t1", 10.0)
        assert s.pending() == 0 and await s.dead_letters() == 0
        assert metering.calls["BatchRecordUsage"] == 1  # refused once, then never tried again
        assert metering.calls["RecordUsage"] == 20
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one() == 20
    finally:
        await s.close()
        await channel.close()
        await server.stop(grace=0)
