"""Router scenarios over real gRPC: failover, breakers, deadlines, filters, idempotency, streams."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.rpc import status_pb2

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import HANG, ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import ADMIN, RouterStack, bearer, start_stack

FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"
HF_SD = "stabilityai/stable-diffusion-2-1"
PRO = bearer("key-pro")
rpb = router_pb2


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unavailable(billable: bool = False) -> ProviderError:
    return ProviderError(
        reasons.PROVIDER_UNAVAILABLE, "503 from provider", http_status=503, billable=billable
    )


async def make(
    clock: FakeClock | None = None, **settings: object
) -> tuple[RouterStack, ControllableAdapter, ControllableAdapter]:
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    hf = ControllableAdapter("huggingface", [spec(HF_SD)])
    defaults: dict[str, object] = {
        "breaker_consecutive_failures": 3,
        "breaker_open_seconds": 5.0,
        "breaker_minimum_calls": 10,
    }
    defaults.update(settings)
    stack = await start_stack(
        {"fal": fal, "replicate": rep, "huggingface": hf},
        prices=[
            price("fal", FAL, 3000),
            price("replicate", REP, 3000),
            price("huggingface", HF_SD, 500),
        ],
        clock=clock,
        **defaults,
    )
    return stack, fal, rep


def req(rid: str = "", **kw: object) -> router_pb2.GenerateImageRequest:
    base: dict[str, object] = {
        "prompt": "a red fox",
        "model": "flux-schnell",
        "width": 256,
        "height": 256,
    }
    base.update(kw)
    return router_pb2.GenerateImageRequest(request_id=rid, **base)  # type: ignore[arg-type]


def attempt_details(err: grpc.aio.AioRpcError) -> list[router_pb2.Attempt]:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            out = []
            for d in status.details:
                if d.Is(router_pb2.Attempt.DESCRIPTOR):
                    a = router_pb2.Attempt()
                    d.Unpack(a)
                    out.append(a)
            return out
    return []


async def test_primary_down_secondary_serves_and_lists_both_attempts() -> None:
    stack, fal, rep = await make()
    try:
        fal.then(unavailable())
        resp = await stack.stub.GenerateImage(req("f1"), metadata=PRO, timeout=10)
        assert resp.provider == "replicate" and resp.model == "flux-schnell"
        assert [(a.provider, a.outcome) for a in resp.attempts] == [
            ("fal", rpb.ATTEMPT_OUTCOME_UNAVAILABLE),
            ("replicate", rpb.ATTEMPT_OUTCOME_SUCCEEDED),
        ]
        assert resp.attempts[0].error_reason == reasons.PROVIDER_UNAVAILABLE
        assert resp.cost_micros == 3000 and not resp.local_substitute
        assert len(fal.calls) == 1 and len(rep.calls) == 1
        tenant = stack.quota.tenant("t_pro")
        assert tenant.used_images == 1 and tenant.reserved_images == 0
        assert len(stack.metering.records) == 1
        spans = stack.spans.get_finished_spans()
        attempts = [s for s in spans if s.name == "router.attempt"]
        generate = next(s for s in spans if s.name == "router.generate")
        assert len(attempts) == 2
        assert all(
            s.parent is not None and s.parent.span_id == generate.context.span_id for s in attempts
        )
        assert any(e.name == "failover" for e in generate.events)
        assert generate.attributes["imagegate.tenant_id"] == "t_pro"
        assert generate.attributes["imagegate.attempts"] == 2
        assert generate.attributes["imagegate.provider"] == "replicate"
        assert "key-pro" not in json.dumps([dict(s.attributes or {}) for s in spans])
        # The adapter's client span is a child of the attempt span.
        attempt_ids = {s.context.span_id for s in attempts}
        clients = [
            s
            for s in spans
            if s.name.endswith("ProviderService/GenerateImage") and s.kind.name == "CLIENT"
        ]
        assert len(clients) == 2 and all(c.parent.span_id in attempt_ids for c in clients)
    finally:
        await stack.stop()


async def test_breaker_opens_skips_primary_then_half_open_probe_closes_it() -> None:
    clock = FakeClock()
    stack, fal, _rep = await make(clock)
    try:
        fal.default = unavailable()
        for i in range(3):
            resp = await stack.stub.GenerateImage(req(f"b{i}"), metadata=PRO, timeout=10)
            assert resp.provider == "replicate"
        assert len(fal.calls) == 3
        resp = await stack.stub.GenerateImage(req("b-skip"), metadata=PRO, timeout=10)
        assert resp.provider == "replicate" and len(resp.attempts) == 1
        assert len(fal.calls) == 3, "an open breaker must not call the primary"
        status = await stack.stub.GetProviderStatus(rpb.GetProviderStatusRequest(), metadata=ADMIN)
        entry = next(p for p in status.providers if p.provider_model == FAL)
        assert entry.state == rpb.BREAKER_STATE_OPEN and entry.trips == 1
        assert entry.last_error_reason == reasons.PROVIDER_UNAVAILABLE
        clock.advance(4.9)
        await stack.stub.GenerateImage(req("b-still"), metadata=PRO, timeout=10)
        assert len(fal.calls) == 3
        clock.advance(0.2)
        fal.default = "ok"
        resp = await stack.stub.GenerateImage(req("b-probe"), metadata=PRO, timeout=10)
        assert resp.provider == "fal" and len(fal.calls) == 4
        status = await stack.stub.GetProviderStatus(rpb.GetProviderStatusRequest(), metadata=ADMIN)
        entry = next(p for p in status.providers if p.provider_model == FAL)
        assert entry.state == rpb.BREAKER_STATE_CLOSED
        spans = stack.spans.get_finished_spans()
        events = [e for s in spans for e in s.events if e.name == "breaker_transition"]
        assert {e.attributes["to"] for e in events} >= {"open", "half_open", "closed"}
    finally:
        await stack.stop()


async def test_rate_limit_with_retry_after_opens_for_that_long() -> None:
    clock = FakeClock()
    stack, fal, _rep = await make(clock)
    try:
        fal.then(
            ProviderError(
                reasons.PROVIDER_RATE_LIMITED, "429", http_status=429, retry_after_seconds=30
            )
        )
        resp = await stack.stub.GenerateImage(req("r1"), metadata=PRO, timeout=10)
        assert resp.attempts[0].outcome == rpb.ATTEMPT_OUTCOME_RATE_LIMITED
        clock.advance(29)
        await stack.stub.GenerateImage(req("r2"), metadata=PRO, timeout=10)
        assert len(fal.calls) == 1
        clock.advance(1.5)
        resp = await stack.stub.GenerateImage(req("r3"), metadata=PRO, timeout=10)
        assert resp.provider == "fal" and len(fal.calls) == 2
    finally:
        await stack.stop()


async def test_moderation_is_returned_and_leaves_breaker_alone() -> None:
    stack, fal, rep = await make()
    try:
        fal.default = ProviderError(reasons.PROVIDER_CONTENT_MODERATED, "refused")
        for i in range(4):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stack.stub.GenerateImage(req(f"m{i}"), metadata=PRO, timeout=10)
            parsed = parse_rpc_error(info.value)
            assert parsed.code == grpc.StatusCode.FAILED_PRECONDITION
            assert parsed.reason == reasons.PROVIDER_CONTENT_MODERATED
        assert len(rep.calls) == 0 and len(fal.calls) == 4
        assert stack.app.breakers.get("fal", FAL).state.value == "closed"
        assert stack.quota.tenant("t_pro").used_images == 0
        assert stack.quota.tenant("t_pro").reserved_images == 0
        resp = await stack.stub.GenerateImage(
            req("m-ok", allow_moderation_failover=True), metadata=PRO, timeout=10
        )
        assert resp.provider == "replicate"
        assert resp.attempts[0].outcome == rpb.ATTEMPT_OUTCOME_MODERATED
    finally:
        await stack.stop()


async def test_three_second_deadline_with_hanging_primary_returns_from_secondary() -> None:
    stack, fal, _rep = await make()
    try:
        fal.default = HANG
        started = time.monotonic()
        resp = await stack.stub.GenerateImage(req("d1"), metadata=PRO, timeout=3.0)
        elapsed = time.monotonic() - started
        assert resp.provider == "replicate" and elapsed < 3.0
        assert resp.attempts[0].outcome == rpb.ATTEMPT_OUTCOME_TIMEOUT
        await asyncio.sleep(0.05)
        assert fal.cancelled == 1, "the adapter must see the attempt's deadline and stop"
    finally:
        await stack.stop()


async def test_cost_ceiling_names_cheapest_option_and_releases_quota() -> None:
    stack, fal, rep = await make()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("c1", max_cost_micros=1000), metadata=PRO, timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.FAILED_PRECONDITION
        assert parsed.reason == reasons.COST_CEILING_UNMET
        assert parsed.metadata["cheapest_cost_micros"] == "3000"
        assert parsed.metadata["cheapest_provider"] == "fal"
        assert "cheapest option" in parsed.message
        assert fal.calls == [] and rep.calls == []
        assert stack.quota.tenant("t_pro").reserved_images == 0
        resp = await stack.stub.GenerateImage(
            req("c2", max_cost_micros=3000), metadata=PRO, timeout=5
        )
        assert resp.cost_micros <= 3000
    finally:
        await stack.stop()


async def test_free_plan_reaches_only_budget_models() -> None:
    stack, fal, rep = await make()
    try:
        free = bearer("key-free")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("p1"), metadata=free, timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
        assert parsed.reason == reasons.PLAN_FORBIDS_MODEL
        assert parsed.metadata["model"] == "flux-schnell"
        resp = await stack.stub.GenerateImage(
            req("p2", model="", preference=rpb.PREFERENCE_SPEED), metadata=free, timeout=5
        )
        assert resp.model == "sd-2.1" and resp.provider == "huggingface"
        assert fal.calls == [] and rep.calls == []
        models = await stack.stub.ListModels(rpb.ListModelsRequest(), metadata=free)
        allowed = {m.alias for m in models.models if m.allowed_by_plan}
        assert "sd-2.1" in allowed and "flux-schnell" not in allowed
    finally:
        await stack.stop()


async def test_duplicate_request_id_charges_once_and_returns_identical_bytes() -> None:
    stack, fal, _rep = await make()
    try:
        fal.default = ("sleep", 0.3)
        first, second = await asyncio.gather(
            stack.stub.GenerateImage(req("dup"), metadata=PRO, timeout=10),
            stack.stub.GenerateImage(req("dup"), metadata=PRO, timeout=10),
        )
        third = await stack.stub.GenerateImage(req("dup"), metadata=PRO, timeout=10)
        assert len(fal.calls) == 1
        assert first.images[0].data == second.images[0].data == third.images[0].data
        assert first.trace_id == third.trace_id
        tenant = stack.quota.tenant("t_pro")
        assert tenant.used_images == 1 and stack.quota.calls["CommitReservation"] == 1
        assert len(stack.metering.records) == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("dup", prompt="other"), metadata=PRO, timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.ALREADY_EXISTS
        assert parsed.reason == reasons.IDEMPOTENCY_KEY_REUSED
        # The same id and body from another tenant is another request: generated and billed again.
        stack.quota.add_key("key-pro-2", "t_pro_2", "pro")
        other = await stack.stub.GenerateImage(req("dup"), metadata=bearer("key-pro-2"), timeout=5)
        assert len(fal.calls) == 2 and other.trace_id != first.trace_id
        assert stack.quota.tenant("t_pro_2").used_images == 1 and tenant.used_images == 1
        assert len(stack.metering.records) == 2
    finally:
        await stack.stop()


async def test_all_providers_down_returns_every_attempt_in_details() -> None:
    stack, fal, rep = await make()
    try:
        fal.default = unavailable()
        rep.default = ProviderError(reasons.PROVIDER_TIMEOUT, "no result", billable=True)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("all"), metadata=PRO, timeout=10)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.UNAVAILABLE
        assert parsed.reason == reasons.ALL_PROVIDERS_FAILED
        compact = json.loads(parsed.metadata["attempts"])
        assert [(a["p"], a["o"], a["r"]) for a in compact] == [
            ("fal", "unavailable", reasons.PROVIDER_UNAVAILABLE),
            ("replicate", "timeout", reasons.PROVIDER_TIMEOUT),
        ]
        assert compact[1]["b"] == 1
        packed = attempt_details(info.value)
        assert [a.provider for a in packed] == ["fal", "replicate"]
        assert parsed.retry_after_seconds is not None
        tenant = stack.quota.tenant("t_pro")
        assert tenant.used_images == 0 and tenant.reserved_images == 0
        # The billable failed attempt is recorded, priced, but nothing is delivered.
        record = stack.metering.records[("t_pro", "all")]
        assert record.outcome == 2 and [a.provider for a in record.attempts] == ["replicate"]
    finally:
        await stack.stop()


async def test_invalid_request_stops_at_once() -> None:
    stack, fal, rep = await make()
    try:
        fal.then(ProviderError(reasons.PROVIDER_INVALID_REQUEST, "prompt too long for provider"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.stub.GenerateImage(req("inv"), metadata=PRO, timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert parsed.reason == reasons.PROVIDER_INVALID_REQUEST
        assert rep.calls == []
        assert stack.app.breakers.get("fal", FAL).snapshot().window_calls == 0
    finally:
        await stack.stop()


async def test_dead_primary_fails_over_fast_and_then_costs_nothing() -> None:
    clock = FakeClock()
    rep = ControllableAdapter("replicate", [spec(REP)])
    stack = await start_stack(
        {"replicate": rep},
        dead_adapters={"fal": "127.0.0.1:1"},
        clock=clock,
        breaker_consecutive_failures=1,
    )
    try:
        # The dead adapter never answered DescribeProvider, so it is not a candidate at all.
        resp = await stack.stub.GenerateImage(req("dead"), metadata=PRO, timeout=5)
        assert resp.provider == "replicate" and len(resp.attempts) == 1
    finally:
        await stack.stop()


async def test_provider_dying_after_describe_trips_provider_breaker() -> None:
    clock = FakeClock()
    stack, _fal, _rep = await make(clock, breaker_consecutive_failures=1)
    try:
        fal_server = stack.servers[2]
        await fal_server.stop(grace=0)
        started = time.monotonic()
        resp = await stack.stub.GenerateImage(req("gone1"), metadata=PRO, timeout=5)
        first = time.monotonic() - started
        assert resp.provider == "replicate"
        assert resp.attempts[0].outcome == rpb.ATTEMPT_OUTCOME_UNAVAILABLE
        assert first < 1.0
        assert stack.app.breakers.get("fal").state.value == "open"
        resp = await stack.stub.GenerateImage(req("gone2"), metadata=PRO, timeout=5)
        assert len(resp.attempts) == 1
    finally:
        await stack.stop()


async def test_every_breaker_open_sends_one_last_resort_probe() -> None:
    clock = FakeClock()
    stack, fal, rep = await make(clock, breaker_consecutive_failures=1)
    try:
        fal.default = unavailable()
        rep.default = unavailable()
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.stub.GenerateImage(req("lr1"), metadata=PRO, timeout=5)
        assert (len(fal.calls), len(rep.calls)) == (1, 1)
        fal.default = "ok"
        resp = await stack.stub.GenerateImage(req("lr2"), metadata=PRO, timeout=5)
        # The probe goes to the candidate whose wait ends first (fal tripped first).
        assert resp.provider == "fal" and len(resp.attempts) == 1
        assert (len(fal.calls), len(rep.calls)) == (2, 1)
        assert any("probe" in n for n in resp.notices)
    finally:
        await stack.stop()


async def test_stream_reports_progress_failover_and_result() -> None:
    stack, fal, _rep = await make()
    try:
        fal.then(unavailable())
        events = [
            e
            async for e in stack.stub.StreamGenerateImage(
                rpb.StreamGenerateImageRequest(request=req("s1")), metadata=PRO, timeout=10
            )
        ]
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "result"
        assert {"attempt_started", "attempt_failed", "failover", "progress"} <= set(kinds)
        assert events[0].accepted.candidates[:2] == [f"fal/{FAL}", f"replicate/{REP}"]
        assert events[-1].result.provider == "replicate"
        fo = next(e.failover for e in events if e.WhichOneof("event") == "failover")
        assert (fo.from_provider, fo.to_provider) == ("fal", "replicate")
        elapsed = [e.elapsed_seconds for e in events]
        assert elapsed == sorted(elapsed)
    finally:
        await stack.stop()


async def test_stream_ends_with_status_when_all_fail() -> None:
    stack, fal, rep = await make()
    try:
        fal.default = rep.default = unavailable()
        call = stack.stub.StreamGenerateImage(
            rpb.StreamGenerateImageRequest(request=req("s2")), metadata=PRO, timeout=10
        )
        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for e in call:
                seen.append(e.WhichOneof("event"))
        assert parse_rpc_error(info.value).reason == reasons.ALL_PROVIDERS_FAILED
        assert seen.count("attempt_failed") == 2
    finally:
        await stack.stop()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_quota_down_fail_closed_or_open(fail_open: bool) -> None:
    stack, fal, _rep = await make(fail_open=fail_open)
    try:
        await stack.stub.GenerateImage(req("q0"), metadata=PRO, timeout=5)
        stack.quota.down = True
        call = stack.stub.GenerateImage(req("q1"), metadata=PRO, timeout=5)
        if fail_open:
            resp = await call
            assert any("fail-open" in n for n in resp.notices)
            assert ("t_pro", "q1") in stack.metering.records
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stack.stub.GenerateImage(req("q2"), metadata=bearer("never-seen"), timeout=5)
            assert parse_rpc_error(info.value).code == grpc.StatusCode.UNAVAILABLE
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            parsed = parse_rpc_error(info.value)
            assert parsed.code == grpc.StatusCode.UNAVAILABLE
            assert parsed.reason == reasons.DEPENDENCY_UNAVAILABLE
            assert len(fal.calls) == 1
    finally:
        await stack.stop()


async def test_caller_cancelling_releases_the_reservation() -> None:
    stack, fal, _rep = await make()
    try:
        fal.default = HANG
        call = stack.stub.GenerateImage(req("cx"), metadata=PRO, timeout=30)
        for _ in range(100):
            if fal.calls:
                break
            await asyncio.sleep(0.02)
        call.cancel()
        for _ in range(100):
            if stack.quota.tenant("t_pro").reserved_images == 0:
                break
            await asyncio.sleep(0.02)
        assert stack.quota.tenant("t_pro").reserved_images == 0
        assert stack.quota.tenant("t_pro").used_images == 0
    finally:
        await stack.stop()
