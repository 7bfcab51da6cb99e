"""The Router's metrics, log lines, trailing metadata and spans for one failover."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.providerkit.errors import ProviderError
from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.fakes import price
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
REP = "black-forest-labs/flux-schnell"


@pytest.fixture
async def stack():
    fal = ControllableAdapter("fal", [spec(FAL)])
    rep = ControllableAdapter("replicate", [spec(REP)])
    s = await start_stack(
        {"fal": fal, "replicate": rep},
        prices=[price("fal", FAL, 3000), price("replicate", REP, 2500)],
        breaker_consecutive_failures=1,
    )
    yield s
    await s.stop()


def request(rid: str) -> router_pb2.GenerateImageRequest:
    return router_pb2.GenerateImageRequest(
        request_id=rid, prompt="secret prompt text", model="flux-schnell", width=256, height=256
    )


async def test_metrics_logs_and_trailers_for_a_failover(stack, caplog) -> None:
    stack.adapters["fal"].then(ProviderError(reasons.PROVIDER_UNAVAILABLE, "503"))
    caplog.set_level(logging.INFO, logger="services.router")
    call = stack.stub.GenerateImage(request("o1"), metadata=bearer("key-pro"), timeout=10)
    resp = await call
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-imagegate-trace-id"] == resp.trace_id
    assert 0 <= float(trailing["x-imagegate-overhead-ms"]) < 5000
    points = stack.metric_points()
    for name in (
        "imagegate.router.requests",
        "imagegate.router.request.duration",
        "imagegate.router.attempt.duration",
        "imagegate.router.overhead",
        "imagegate.router.breaker.transitions",
        "imagegate.router.breaker.state",
        "imagegate.router.cost",
        "imagegate.router.in_flight",
    ):
        assert name in points, name
    served = [
        p for p in points["imagegate.router.requests"] if p.attributes.get("outcome") == "succeeded"
    ]
    assert served and served[0].attributes["provider"] == "replicate"
    assert sum(p.value for p in points["imagegate.router.cost"]) == 2500
    states = {
        p.attributes["provider_model"]: p.value
        for p in points["imagegate.router.breaker.state"]
        if p.attributes["provider"] == "fal"
    }
    assert states[FAL] == 2
    request_lines = [r for r in caplog.records if getattr(r, "event", "") == "request"]
    assert len(request_lines) == 1
    line = request_lines[0]
    assert (line.tenant_id, line.request_id, line.outcome, line.attempts) == (
        "t_pro",
        "o1",
        "succeeded",
        2,
    )
    transitions = [r for r in caplog.records if getattr(r, "event", "") == "breaker_transition"]
    assert transitions and transitions[0].to == "open"
    everything = json.dumps([vars(r) for r in caplog.records], default=str)
    assert "key-pro" not in everything and "secret prompt text" not in everything
    spans = stack.spans.get_finished_spans()
    assert "secret prompt text" not in json.dumps([dict(s.attributes or {}) for s in spans])
    attempt = next(
        s
        for s in spans
        if s.name == "router.attempt" and s.attributes["imagegate.provider"] == "fal"
    )
    assert attempt.attributes["imagegate.outcome"] == "unavailable"
    assert attempt.attributes["imagegate.error_reason"] == reasons.PROVIDER_UNAVAILABLE
    assert attempt.attributes["imagegate.attempt_number"] == 1
    assert attempt.attributes["imagegate.breaker_state"] == "closed"
    assert attempt.attributes["imagegate.billable"] is False
    generate = next(s for s in spans if s.name == "router.generate")
    assert generate.attributes["imagegate.cost_micros"] == 2500
    assert generate.attributes["imagegate.images"] == 1
    assert generate.attributes["imagegate.megapixels"] == pytest.approx(0.065536)
    assert generate.attributes["imagegate.outcome"] == "succeeded"


async def test_error_carries_trace_id_and_a_log_line(stack, caplog) -> None:
    stack.adapters["fal"].default = ProviderError(reasons.PROVIDER_UNAVAILABLE, "503")
    stack.adapters["replicate"].default = ProviderError(reasons.PROVIDER_UNAVAILABLE, "503")
    caplog.set_level(logging.INFO, logger="services.router")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.GenerateImage(request("o2"), metadata=bearer("key-pro"), timeout=10)
    parsed = parse_rpc_error(info.value)
    assert len(parsed.metadata["trace_id"]) == 32
    line = next(r for r in caplog.records if getattr(r, "event", "") == "request")
    assert line.outcome == "all_providers_failed" and line.attempts == 2


async def test_prompt_recorded_only_when_enabled() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal}, record_prompts=True, prompt_record_chars=6)
    try:
        await s.stub.GenerateImage(request("o3"), metadata=bearer("key-pro"), timeout=10)
        generate = next(x for x in s.spans.get_finished_spans() if x.name == "router.generate")
        assert generate.attributes["imagegate.prompt"] == "secret"
    finally:
        await s.stop()
