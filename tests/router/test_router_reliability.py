"""Router reliability over real gRPC: channel retries, pushback, deadlines, faults, shedding."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.router.v1 import router_pb2
from services.router.reserve_batch import STALL_SECONDS
from tests.fixtures.adapters import HANG, ControllableAdapter, spec
from tests.fixtures.faults import FaultInjector
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"
PRO = bearer("key-pro")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req(rid: str = "") -> router_pb2.GenerateImageRequest:
    return router_pb2.GenerateImageRequest(
        request_id=rid, prompt="fox", model="flux-schnell", width=256, height=256
    )


async def pair(**settings: object):
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack({"fal": fal, "replicate": rep}, **settings)  # type: ignore[arg-type]
    return stack, fal, rep


async def test_invalid_request_is_one_call_without_failover_and_leaves_the_budget_alone() -> None:
    stack, fal, rep = await pair()
    try:
        before = stack.app.executor.throttle.tokens
        fal.then(ProviderError(reasons.PROVIDER_INVALID_REQUEST, "bad"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.stub.GenerateImage(req(), metadata=PRO, timeout=5)
        assert (len(fal.calls), len(rep.calls)) == (1, 0)
        assert stack.app.executor.throttle.tokens == before
    finally:
        await stack.stop()


async def test_quota_unavailable_twice_then_ok_is_retried_by_the_channel() -> None:
    stack, _fal, _ = await pair()
    try:
        stack.quota.fail_next = 2
        resp = await stack.stub.GenerateImage(req("qr"), metadata=PRO, timeout=5)
        assert resp.provider == "fal"
        assert stack.quota.calls["ReserveQuota"] == 3
        assert stack.quota.reserve_metadata[-1].get("grpc-previous-rpc-attempts") == "2"
    finally:
        await stack.stop()


async def test_quota_pushback_minus_one_stops_channel_retries() -> None:
    stack, _fal, _ = await pair()
    try:
        stack.quota.fail_next = 5
        stack.quota.pushback_ms = "-1"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("pb"), metadata=PRO, timeout=5)
        assert parse_rpc_error(info.value).reason == reasons.DEPENDENCY_UNAVAILABLE
        assert stack.quota.calls["ReserveQuota"] == 1
    finally:
        await stack.stop()


async def test_quota_pushback_delays_the_channel_retry() -> None:
    stack, _fal, _ = await pair()
    try:
        stack.quota.fail_next = 1
        stack.quota.pushback_ms = "200"
        started = time.monotonic()
        await stack.stub.GenerateImage(req("pb2"), metadata=PRO, timeout=5)
        assert time.monotonic() - started >= 0.2
        assert stack.quota.calls["ReserveQuota"] == 2
    finally:
        await stack.stop()


async def test_client_deadline_bounds_the_adapter_call_and_cancels_it() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=HANG)
    stack = await start_stack({"fal": fal})
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("dl"), metadata=PRO, timeout=0.5)
        elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 0.5 + 0.15
        assert fal.deadlines and fal.deadlines[0] <= 0.5
        for _ in range(50):
            if fal.cancelled:
                break
            await asyncio.sleep(0.01)
        assert fal.cancelled == 1, "the adapter saw the cancellation and stopped"
        assert stack.quota.tenant("t_pro").reserved_images == 0
    finally:
        await stack.stop()


async def test_failover_to_the_secondary_charges_once_for_the_served_attempt() -> None:
    stack, fal, _rep = await pair()
    try:
        fal.then(ProviderError(reasons.PROVIDER_UNAVAILABLE, "503"))
        resp = await stack.stub.GenerateImage(req("once"), metadata=PRO, timeout=5)
        assert resp.provider == "replicate"
        assert stack.quota.calls["CommitReservation"] == 1
        assert stack.quota.calls.get("ReleaseReservation", 0) == 0
        record = stack.metering.records[("t_pro", "once")]
        assert [a.provider for a in record.attempts] == ["replicate"]
    finally:
        await stack.stop()


async def test_injected_aborts_trip_the_breaker_and_it_heals_after_the_open_wait() -> None:
    clock = FakeClock()
    fault = FaultInjector()
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack(
        {"fal": fal, "replicate": rep},
        faults={"fal": fault},
        clock=clock,
        breaker_consecutive_failures=3,
        breaker_open_seconds=10.0,
    )
    try:
        fault.abort_code, fault.abort_percent = grpc.StatusCode.UNAVAILABLE, 100
        for i in range(6):
            resp = await stack.stub.GenerateImage(req(f"fi{i}"), metadata=PRO, timeout=5)
            assert resp.provider == "replicate"
        assert fault.injected == 3, "after 3 injected failures the breaker stops calling fal"
        fault.abort_percent = 0
        clock.now += 10.5
        resp = await stack.stub.GenerateImage(req("healed"), metadata=PRO, timeout=5)
        assert resp.provider == "fal" and len(resp.attempts) == 1
        assert stack.app.breakers.get("fal").state.value == "closed"
    finally:
        await stack.stop()


async def test_injected_delay_and_abort_shares_are_drawn_per_call() -> None:
    fault = FaultInjector()
    fault.delay_seconds, fault.delay_percent = 0.0, 20
    fault.abort_code, fault.abort_percent = grpc.StatusCode.UNAVAILABLE, 5
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack(
        {"fal": fal, "replicate": rep},
        faults={"fal": fault},
        breaker_consecutive_failures=100,
        breaker_minimum_calls=1000,
        # One adapter call per request is what this counts: no hedge on a machine stall.
        hedge=False,
    )
    try:
        for i in range(200):
            await stack.stub.GenerateImage(req(f"d{i}"), metadata=PRO, timeout=5)
        # 20% delay + 5% abort drawn independently: about 24% of calls affected.
        assert 30 <= fault.injected <= 70
        # Aborted calls never reached fal's adapter; each one failed over to replicate.
        assert len(fal.calls) + len(rep.calls) == 200 and 3 <= len(rep.calls) <= 25
    finally:
        await stack.stop()


async def test_load_shedding_is_immediate_and_not_a_provider_failure() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.5))
    stack = await start_stack({"fal": fal}, maximum_concurrent_rpcs=2)
    try:
        calls = [stack.stub.GenerateImage(req(f"s{i}"), metadata=PRO, timeout=5) for i in range(5)]
        started = time.monotonic()
        results = await asyncio.gather(*calls, return_exceptions=True)
        shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert len(served) == 2 and len(shed) == 3
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in shed)
        assert time.monotonic() - started < 1.5
        snap = stack.app.breakers.get("fal", FAL).snapshot()
        assert snap.error_rate == 0 and snap.window_calls == 2
    finally:
        await stack.stop()


async def test_adapter_concurrency_limit_fails_over_without_tripping_the_breaker() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack({"fal": fal, "replicate": rep}, breaker_consecutive_failures=1)
    try:
        fal.default = ProviderError(
            reasons.PROVIDER_CONCURRENCY_LIMITED, "full", retry_after_seconds=1
        )
        for i in range(3):
            resp = await stack.stub.GenerateImage(req(f"c{i}"), metadata=PRO, timeout=5)
            assert resp.provider == "replicate"
            assert resp.attempts[0].outcome == router_pb2.ATTEMPT_OUTCOME_OVERLOADED
        assert len(fal.calls) == 3
        assert stack.app.breakers.get("fal").state.value == "closed"
    finally:
        await stack.stop()


async def test_failover_budget_stops_amplification_when_everything_fails() -> None:
    stack, fal, rep = await pair(
        failover_max_tokens=4,
        failover_token_ratio=1.6,
        breaker_consecutive_failures=1000,
        breaker_minimum_calls=1000,
    )
    try:
        fal.default = rep.default = ProviderError(reasons.PROVIDER_UNAVAILABLE, "503")
        for i in range(4):
            with pytest.raises(grpc.aio.AioRpcError):
                await stack.stub.GenerateImage(req(f"a{i}"), metadata=PRO, timeout=5)
        # First request: fal fails (3 left, may fail over), replicate fails (2 left).
        # Later requests: fal fails and the budget forbids failing over.
        assert len(fal.calls) == 4 and len(rep.calls) == 1
        rep.default = "ok"
        fal.default = "ok"
        resp = await stack.stub.GenerateImage(req("a-ok"), metadata=PRO, timeout=5)
        assert resp.provider == "fal"
    finally:
        await stack.stop()


async def test_burst_beyond_adapter_limit_queues_in_the_router_instead_of_failing() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.2), limit=2)
    stack = await start_stack({"fal": fal})
    try:
        results = await asyncio.gather(
            *(stack.stub.GenerateImage(req(f"b{i}"), metadata=PRO, timeout=10) for i in range(8))
        )
        assert all(r.provider == "fal" for r in results)
        assert fal.peak_active == 2 and len(fal.calls) == 8
        assert all(len(r.attempts) == 1 for r in results)
    finally:
        await stack.stop()


async def test_no_slot_within_the_budget_is_overloaded_and_fails_over() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=HANG, limit=1)
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack({"fal": fal, "replicate": rep}, breaker_consecutive_failures=1)
    try:
        blocker = asyncio.ensure_future(
            stack.stub.GenerateImage(req("hold"), metadata=PRO, timeout=30)
        )
        for _ in range(100):
            if fal.calls:
                break
            await asyncio.sleep(0.01)
        resp = await stack.stub.GenerateImage(req("next"), metadata=PRO, timeout=3)
        assert resp.provider == "replicate"
        assert resp.attempts[0].outcome == router_pb2.ATTEMPT_OUTCOME_OVERLOADED
        assert len(fal.calls) == 1, "the queued attempt never reached the busy adapter"
        assert stack.app.breakers.get("fal", FAL).state.value == "closed"
        blocker.cancel()
    finally:
        await stack.stop()


async def test_timeout_under_a_squeezed_budget_does_not_count_against_health() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.3))
    stack = await start_stack({"fal": fal}, breaker_consecutive_failures=1)
    try:
        for i in range(5):
            await stack.stub.GenerateImage(req(f"w{i}"), metadata=PRO, timeout=5)
        fal.default = HANG
        with pytest.raises(grpc.aio.AioRpcError):
            # 0.5 s deadline: about 0.48 s for the attempt, under twice the usual 0.3 s.
            await stack.stub.GenerateImage(req("short"), metadata=PRO, timeout=0.5)
        breaker = stack.app.breakers.get("fal", FAL)
        assert breaker.state.value == "closed"
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.stub.GenerateImage(req("long"), metadata=PRO, timeout=2.5)
        assert breaker.state.value == "open", "a fair budget that times out is a health signal"
    finally:
        await stack.stop()


async def test_a_quota_without_batch_reserves_gets_single_reserves_and_every_request_served() -> (
    None
):
    # The fake Quota implements only the single RPCs (like an older Quota build).
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.05))
    stack = await start_stack({"fal": fal})
    try:
        for burst in range(2):
            results = await asyncio.gather(
                *(
                    stack.stub.GenerateImage(req(f"s{burst}-{i}"), metadata=PRO, timeout=10)
                    for i in range(30)
                )
            )
            assert all(r.provider == "fal" for r in results)
        batcher = stack.app.reserve_batcher
        assert 1 <= batcher.batch_calls <= 3, "refused batches should stop being tried"
        assert len(stack.quota.reservations) == 60
    finally:
        await stack.stop()


async def test_a_stuck_reserve_call_delays_the_reserves_behind_it_about_a_second_not_its_timeout() -> (
    None
):
    fal = ControllableAdapter("fal", [spec(FAL)], default=("sleep", 0.01))
    stack = await start_stack({"fal": fal})
    try:
        await stack.stub.GenerateImage(req("warm"), metadata=PRO, timeout=5)  # key resolved
        stack.quota.hang_next = 1
        stuck = asyncio.ensure_future(
            stack.stub.GenerateImage(req("stuck"), metadata=PRO, timeout=20)
        )
        await asyncio.wait_for(stack.quota.hanging.wait(), 5)
        started = time.monotonic()
        behind = await asyncio.gather(
            *(
                stack.stub.GenerateImage(req(f"behind{i}"), metadata=PRO, timeout=8)
                for i in range(6)
            )
        )
        waited = time.monotonic() - started
        assert all(r.provider == "fal" and not r.notices for r in behind)
        # Before: they waited for the stuck call's own timeout (the caller's 20 s deadline).
        assert waited < STALL_SECONDS + 2.0, waited
        assert not stuck.done(), "the stuck call is still out; the others did not wait for it"
        stuck.cancel()
    finally:
        await stack.stop()
