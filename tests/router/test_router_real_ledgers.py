"""Against the real Quota and Metering services: failover and a duplicate request charge once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.main import start_adapter_server
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.metering.catalog import load_catalog as load_prices
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore
from services.router.config import RouterSettings
from services.router.server import start_router
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.router_stack import bearer

ADMIN = (("authorization", "Bearer admin-test"),)


@pytest.fixture
async def real_stack(tmp_path: Path):
    tel = setup_telemetry("real-ledgers")
    qstore = QuotaStore.open(f"sqlite:///{tmp_path / 'q.db'}", plans=load_plans(), pepper="p")
    quota = await start_quota_server(
        qstore, address="127.0.0.1:0", admin_token="admin-test", telemetry=tel, sweep_interval=None
    )
    mstore = MeteringStore.open(f"sqlite:///{tmp_path / 'm.db'}", catalog=load_prices())
    metering = await start_metering_server(mstore, address="127.0.0.1:0", telemetry=tel)
    fal = ControllableAdapter("fal", [spec("fal-ai/flux/schnell")])
    rep = ControllableAdapter("replicate", [spec("black-forest-labs/flux-schnell")])
    adapters = [
        (await start_adapter_server(a, address="127.0.0.1:0", telemetry=tel))[0] for a in (fal, rep)
    ]
    settings = RouterSettings(
        adapters=f"fal={adapters[0].address},replicate={adapters[1].address}",
        quota_addr=quota.address,
        metering_addr=metering.running.address,
        data_dir=tmp_path,
    )
    router, app, handle = await start_router(settings, tel, address="127.0.0.1:0")
    qchan = create_channel(quota.address)
    qstub = quota_pb2_grpc.QuotaServiceStub(qchan)
    tenant = await qstub.CreateTenant(
        quota_pb2.CreateTenantRequest(request_id="t1", name="acme", plan="pro"), metadata=ADMIN
    )
    key = await qstub.CreateApiKey(
        quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="t"), metadata=ADMIN
    )
    rchan = create_channel(router.address)
    mchan = create_channel(metering.running.address)
    yield {
        "router": router_pb2_grpc.RouterServiceStub(rchan),
        "quota": qstub,
        "metering": metering_pb2_grpc.MeteringServiceStub(mchan),
        "tenant": tenant.tenant.id,
        "key": key.api_key,
        "fal": fal,
        "rep": rep,
        "app": app,
    }
    for ch in (rchan, qchan, mchan):
        await ch.close()
    await handle.stop(grace=0.5)
    for a in adapters:
        await a.stop(0.1)
    await quota.stop(0.1)
    await metering.running.stop(0.1)
    await mstore.close()
    tel.shutdown()


async def test_failover_and_duplicate_charge_once_in_real_ledgers(real_stack) -> None:
    s = real_stack
    s["fal"].then(ProviderError(reasons.PROVIDER_UNAVAILABLE, "503", http_status=503))
    s["rep"].default = ("sleep", 0.2)
    request = router_pb2.GenerateImageRequest(
        request_id="real-1", prompt="a lighthouse", model="flux-schnell", width=512, height=512
    )
    md = bearer(s["key"])
    first, second = await asyncio.gather(
        s["router"].GenerateImage(request, metadata=md, timeout=10),
        s["router"].GenerateImage(request, metadata=md, timeout=10),
    )
    third = await s["router"].GenerateImage(request, metadata=md, timeout=10)
    assert first.provider == "replicate" and len(first.attempts) == 2
    assert first.images[0].data == second.images[0].data == third.images[0].data
    assert len(s["rep"].calls) == 1
    quota = await s["quota"].GetQuota(quota_pb2.GetQuotaRequest(tenant_id=s["tenant"]))
    assert quota.quota.used_images == 1 and quota.quota.reserved_images == 0
    records = await s["metering"].ListUsageRecords(
        metering_pb2.ListUsageRecordsRequest(tenant_id=s["tenant"])
    )
    assert len(records.records) == 1
    record = records.records[0]
    assert record.provider == "replicate" and record.request_id == "real-1"
    assert first.cost_micros == record.cost_micros > 0
    assert quota.quota.used_cost_micros == record.cost_micros


async def test_a_burst_shares_reserve_round_trips_and_still_grants_exactly_the_plan(
    real_stack,
) -> None:
    """70 concurrent requests of a tenant with 50 images left, three of them one request_id:
    reserves go to Quota in batches, yet exactly 50 are served, the refused get QuotaFailure as
    from a single call, and the repeated id runs once."""
    s = real_stack
    s["fal"].default = ("sleep", 0.05)
    # The pro plan's 500 a month, 450 of them held elsewhere: 50 left.
    await s["quota"].ReserveQuota(
        quota_pb2.ReserveQuotaRequest(request_id="elsewhere", tenant_id=s["tenant"], images=450)
    )
    md = bearer(s["key"])

    async def one(request_id: str) -> router_pb2.GenerateImageResponse | grpc.aio.AioRpcError:
        request = router_pb2.GenerateImageRequest(
            request_id=request_id, prompt="a kite", model="flux-schnell", width=512, height=512
        )
        try:
            return await s["router"].GenerateImage(request, metadata=md, timeout=20)
        except grpc.aio.AioRpcError as err:
            return err

    ids = [f"burst-{i}" for i in range(67)] + ["same"] * 3
    answers = await asyncio.gather(*(one(i) for i in ids))
    batcher = s["app"].reserve_batcher
    assert batcher.batch_calls >= 1 and batcher.batched >= 2
    served = [a for a in answers if isinstance(a, router_pb2.GenerateImageResponse)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    same = [a for a, i in zip(answers, ids, strict=True) if i == "same"]
    distinct_served = {a.request_id for a in served}
    assert len(distinct_served) == 50
    for err in refused:
        parsed = parse_rpc_error(err)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, parsed
        assert parsed.reason == reasons.QUOTA_EXCEEDED and parsed.quota_violations
    if isinstance(same[0], router_pb2.GenerateImageResponse):
        assert all(isinstance(a, router_pb2.GenerateImageResponse) for a in same)
        assert len({a.images[0].data for a in same}) == 1  # type: ignore[union-attr]
    assert sum(1 for c in s["fal"].calls if c.request_id == "same") <= 1
    # Commits go out in the background after the replies: wait for them (bounded).
    await s["app"].settled(s["tenant"])
    quota = await s["quota"].GetQuota(quota_pb2.GetQuotaRequest(tenant_id=s["tenant"]))
    assert (quota.quota.used_images, quota.quota.reserved_images) == (50, 450)
