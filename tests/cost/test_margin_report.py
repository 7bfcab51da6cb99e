"""The margin report on a seeded month equals a hand computation (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.metering.catalog import load_catalog
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans

ADMIN = (("authorization", "Bearer margin-admin"),)
OK = metering_pb2.REQUEST_OUTCOME_SUCCEEDED
FAILED = metering_pb2.REQUEST_OUTCOME_FAILED


def _ts(day: int, hour: int = 12) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime(2026, 12, day, hour, tzinfo=UTC))
    return ts


def _attempt(
    n: int, provider: str, model: str, ok: bool, **usage: float
) -> metering_pb2.BilledAttempt:
    return metering_pb2.BilledAttempt(
        provider=provider,
        provider_model=model,
        attempt_number=n,
        succeeded=ok,
        usage=image_pb2.Usage(**usage),  # type: ignore[arg-type]
        usage_reported=True,
    )


FAL = ("fal", "fal-ai/flux/schnell")  # $0.003 per whole MP
BFL = ("bfl", "flux-dev")  # $0.025 per image
OAI = ("openai", "gpt-image-1")  # $40 / 1M output tokens, $5 / 1M input

# (tenant, plan, request id, day, outcome, charge, attempts)
SEED = [
    # t_pro1 on pro: two fal images (1 MP each = 3,000 each); one failover bfl -> fal.
    ("t_pro1", "pro", "a", 1, OK, 3_000, [_attempt(1, *FAL, True, images=1, megapixels=0.786432)]),
    (
        "t_pro1",
        "pro",
        "b",
        2,
        OK,
        3_000,
        [
            _attempt(1, *BFL, False, images=1, megapixels=0.786432),
            _attempt(2, *FAL, True, images=1, megapixels=0.786432),
        ],
    ),
    # t_pro2 on free early in the month, pro at its latest request: counted as pro.
    ("t_pro2", "free", "c", 3, OK, 25_000, [_attempt(1, *BFL, True, images=1, megapixels=1.0)]),
    ("t_pro2", "pro", "d", 20, FAILED, 0, [_attempt(1, *BFL, False, images=1, megapixels=1.0)]),
    # t_biz on business: one GPT image (1,056 out + 20 in tokens = 42,340), two bfl images.
    (
        "t_biz",
        "business",
        "e",
        5,
        OK,
        42_340,
        [
            _attempt(
                1, *OAI, True, images=1, megapixels=1.048576, output_tokens=1056, input_tokens=20
            )
        ],
    ),
    ("t_biz", "business", "f", 6, OK, 50_000, [_attempt(1, *BFL, True, images=2, megapixels=2.0)]),
    # t_free on free: one fal image of 2 whole MP (1024x1024 rounds up) = 6,000.
    ("t_free", "free", "g", 7, OK, 6_000, [_attempt(1, *FAL, True, images=1, megapixels=1.048576)]),
]


@pytest.fixture
async def seeded(database_url: str) -> AsyncIterator[metering_pb2_grpc.MeteringServiceStub]:
    store = MeteringStore.open(database_url, catalog=load_catalog())
    prices = {p.id: p.price_micros for p in load_plans().values()}
    server = await start_metering_server(
        store,
        address="127.0.0.1:0",
        telemetry=setup_telemetry("margin-test"),
        admin_token="margin-admin",
        plan_prices=prices,
    )
    channel = create_channel(server.address)
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    for tenant, plan, rid, day, outcome, charge, attempts in SEED:
        await stub.RecordUsage(
            metering_pb2.RecordUsageRequest(
                request_id=rid,
                tenant_id=tenant,
                model="m",
                outcome=outcome,  # type: ignore[arg-type]
                attempts=attempts,
                occurred_at=_ts(day),
                tenant_charge_micros=charge,
                plan=plan,
            )
        )
    # Another month's usage must not count.
    await stub.RecordUsage(
        metering_pb2.RecordUsageRequest(
            request_id="nov",
            tenant_id="t_biz",
            model="m",
            outcome=OK,
            attempts=[_attempt(1, *BFL, True, images=1, megapixels=1.0)],
            occurred_at=timestamp_pb2.Timestamp(seconds=1_795_000_000),
            tenant_charge_micros=25_000,
            plan="business",
        )
    )
    try:
        yield stub
    finally:
        await channel.close()
        await server.stop(0)


async def test_margin_report_of_a_seeded_month_matches_the_hand_computation(seeded) -> None:
    report = (
        await seeded.GetMarginReport(
            metering_pb2.GetMarginReportRequest(period="2026-12"), metadata=ADMIN
        )
    ).report
    lines = {(line.plan, line.tenant_id): line for line in report.tenants}
    # By hand. pro: t_pro1 $29 + t_pro2 $29 = 58,000,000 revenue. Provider cost: t_pro1
    # 3,000 + (25,000 failed + 3,000) = 31,000; t_pro2 25,000 + 25,000 failed = 50,000.
    pro1 = lines[("pro", "t_pro1")]
    assert (pro1.requests, pro1.images, pro1.revenue_micros) == (2, 2, 29_000_000)
    assert (pro1.provider_cost_micros, pro1.failed_attempt_cost_micros) == (31_000, 25_000)
    assert pro1.usage_charge_micros == 6_000
    assert {
        (p.provider, p.attempts, p.cost_micros, p.failed_cost_micros) for p in pro1.provider_costs
    } == {
        ("bfl", 1, 25_000, 25_000),
        ("fal", 2, 6_000, 0),
    }
    pro2 = lines[("pro", "t_pro2")]
    assert (pro2.images, pro2.provider_cost_micros, pro2.failed_attempt_cost_micros) == (
        1,
        50_000,
        25_000,
    )
    plans = {line.plan: line for line in report.plans}
    assert set(plans) == {"pro", "business", "free"}
    pro = plans["pro"]
    assert (pro.tenants, pro.requests, pro.images) == (2, 4, 3)
    assert pro.revenue_micros == 58_000_000
    assert pro.provider_cost_micros == 81_000 and pro.failed_attempt_cost_micros == 50_000
    assert pro.gross_margin_micros == 58_000_000 - 81_000
    assert pro.gross_margin_percent == pytest.approx(round(100 * 57_919_000 / 58_000_000, 2))
    # business: $99; 42,340 (openai) + 50,000 (bfl) = 92,340.
    biz = plans["business"]
    assert (biz.tenants, biz.images, biz.revenue_micros) == (1, 3, 99_000_000)
    assert biz.provider_cost_micros == 92_340 and biz.failed_attempt_cost_micros == 0
    assert [(p.provider, p.cost_micros) for p in biz.provider_costs] == [
        ("bfl", 50_000),
        ("openai", 42_340),
    ]
    # free: $0 revenue, 6,000 cost: a negative margin, 0 % (no revenue to divide by).
    free = plans["free"]
    assert (free.revenue_micros, free.provider_cost_micros, free.gross_margin_micros) == (
        0,
        6_000,
        -6_000,
    )
    assert free.gross_margin_percent == 0
    total = report.total
    assert (total.tenants, total.requests, total.images) == (4, 7, 7)
    assert total.revenue_micros == 157_000_000
    assert total.provider_cost_micros == 81_000 + 92_340 + 6_000
    assert total.failed_attempt_cost_micros == 50_000
    assert total.gross_margin_micros == 157_000_000 - 179_340
    assert total.usage_charge_micros == 6_000 + 25_000 + 42_340 + 50_000 + 6_000


async def test_margin_report_needs_the_admin_token(seeded) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await seeded.GetMarginReport(metering_pb2.GetMarginReportRequest(period="2026-12"))
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.UNAUTHENTICATED
    assert parsed.reason == reasons.ADMIN_TOKEN_INVALID
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await seeded.GetMarginReport(
            metering_pb2.GetMarginReportRequest(period="December"), metadata=ADMIN
        )
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["period"]
