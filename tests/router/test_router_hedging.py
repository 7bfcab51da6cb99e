"""Hedging: a primary past its usual p95 is raced by a healthy follower; both are accounted."""

from __future__ import annotations

import asyncio
import time

from imagegate.grpckit import reasons
from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import HANG, ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"
PRO = bearer("key-pro")


def request(request_id: str) -> router_pb2.GenerateImageRequest:
    return router_pb2.GenerateImageRequest(
        prompt="fox", model="flux-schnell", width=64, height=64, request_id=request_id
    )


async def test_hanging_primary_costs_its_usual_p95_plus_the_follower_from_the_first_request() -> (
    None
):
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.05))
    rep = ControllableAdapter("replicate", [spec(REP)], default=("sleep", 0.05))
    prices = [price("fal", FAL, 3000), price("replicate", REP, 3000)]
    s = await start_stack(
        {"fal": fal, "replicate": rep}, prices=prices, hedge_min_delay_seconds=0.05
    )
    try:
        for i in range(5):  # the primary's usual latency: ~50 ms
            resp = await s.stub.GenerateImage(request(f"warm-{i}"), metadata=PRO, timeout=10)
            assert resp.provider == "fal"
        fal.default = HANG
        t0 = time.perf_counter()
        resp = await s.stub.GenerateImage(request("hedged"), metadata=PRO, timeout=10)
        took = time.perf_counter() - t0
        assert resp.provider == "replicate"
        # Usual p95 (~50 ms, hedge floor 50 ms) + the follower's 50 ms, with room for a busy box;
        # without hedging the primary would hold the request for seconds.
        assert took < 0.6, took
        loser = next(a for a in resp.attempts if a.provider == "fal")
        assert loser.outcome == router_pb2.ATTEMPT_OUTCOME_CANCELLED
        assert loser.error_reason == reasons.HEDGE_LOST and loser.billable
        assert sorted(a.attempt_number for a in resp.attempts) == [1, 2]
        assert any("started alongside" in n for n in resp.notices)
        # The hung primary's call was cancelled at the adapter, not left running.
        for _ in range(100):
            if fal.active == 0:
                break
            await asyncio.sleep(0.02)
        assert fal.active == 0 and fal.cancelled >= 1
        # Metered for what each provider did: the winner succeeded, the loser may be billed.
        await s.app.settled("t_pro")
        record = s.metering.records[("t_pro", "hedged")]
        billed = {(a.provider, a.succeeded) for a in record.attempts}
        assert billed == {("replicate", True), ("fal", False)}
        # Provider cost covers both; the tenant is charged only the delivered images.
        assert record.cost_micros == 6000 and record.failed_cost_micros == 3000
        assert record.tenant_charge_micros == 3000 and resp.cost_micros == 3000
        # The cancelled loser reported nothing: the requested size is recorded as an estimate.
        [lost] = [a for a in record.attempts if not a.succeeded]
        assert not lost.usage_reported and "estimated" in lost.note
        assert lost.usage.images == 1
    finally:
        await s.stop()


async def test_a_primary_within_its_usual_latency_is_never_hedged() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.02))
    rep = ControllableAdapter("replicate", [spec(REP)])
    # The floor keeps a busy test machine's scheduling hiccups from looking like a slow provider.
    s = await start_stack({"fal": fal, "replicate": rep}, hedge_min_delay_seconds=0.5)
    try:
        for i in range(8):
            resp = await s.stub.GenerateImage(request(f"n-{i}"), metadata=PRO, timeout=10)
            assert resp.provider == "fal" and len(resp.attempts) == 1
        assert rep.calls == []
    finally:
        await s.stop()


async def test_hedging_can_be_switched_off() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.02))
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack({"fal": fal, "replicate": rep}, hedge=False)
    try:
        for i in range(5):
            await s.stub.GenerateImage(request(f"w-{i}"), metadata=PRO, timeout=10)
        fal.default = ("sleep", 0.4)
        resp = await s.stub.GenerateImage(request("slow"), metadata=PRO, timeout=10)
        assert resp.provider == "fal" and rep.calls == []
    finally:
        await s.stop()
