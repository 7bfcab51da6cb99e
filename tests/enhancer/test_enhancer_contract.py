"""EnhancerService against chat/completions emulators: rewrite, cache, failover, faults, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from imagegate.emulators.base import Fault
from imagegate.enhancer.v1 import enhancer_pb2
from imagegate.grpckit.errors import parse_rpc_error
from tests.enhancer.stack import KEYS, EnhancerStack, start_enhancer_stack

pytestmark = pytest.mark.timeout(60)


def request(**overrides: object) -> enhancer_pb2.EnhancePromptRequest:
    values: dict[str, object] = {
        "prompt": "knight",
        "style": "game-sprite",
        "style_description": "A single game character on a plain background.",
        "style_keywords": "game sprite, full body, centered",
        "image_model": "flux-schnell",
        "prompt_format": enhancer_pb2.PROMPT_FORMAT_NATURAL_LANGUAGE,
        "negative_prompt_supported": True,
        "negative_prompt": "blurry, text",
    }
    values.update(overrides)
    return enhancer_pb2.EnhancePromptRequest(**values)  # type: ignore[arg-type]


@pytest.fixture
async def stack() -> AsyncIterator[EnhancerStack]:
    s = await start_enhancer_stack(breaker_failures=1, breaker_open_seconds=30.0)
    yield s
    await s.stop()


async def test_rewrite_comes_from_the_first_provider_with_its_usage(stack: EnhancerStack) -> None:
    resp = await stack.stub.EnhancePrompt(request(), timeout=5)
    assert resp.provider == "groq"
    assert resp.provider_model == "llama-3.1-8b-instant"
    assert resp.prompt.startswith("knight, highly detailed")
    assert "game sprite, full body, centered" in resp.prompt
    assert resp.negative_prompt == "blurry, text"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert not resp.cached and not resp.failures
    (call,) = stack.emulators["groq"].calls
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {KEYS['groq']}"
    assert call.body["model"] == "llama-3.1-8b-instant"
    user = call.body["messages"][-1]["content"]
    assert "<prompt>knight</prompt>" in user and "game-sprite" in user
    assert "natural language" in user
    assert not stack.emulators["cerebras"].calls


async def test_tag_style_models_are_asked_for_tags_and_no_negative_when_unsupported(
    stack: EnhancerStack,
) -> None:
    resp = await stack.stub.EnhancePrompt(
        request(prompt_format=enhancer_pb2.PROMPT_FORMAT_TAGS, negative_prompt_supported=False),
        timeout=5,
    )
    user = stack.emulators["groq"].calls[0].body["messages"][-1]["content"]
    assert "comma-separated tags" in user
    assert "ignores negative prompts" in user
    assert resp.negative_prompt == "blurry, text"


async def test_identical_rewrite_is_served_from_cache_without_an_upstream_call(
    stack: EnhancerStack,
) -> None:
    first = await stack.stub.EnhancePrompt(request(), timeout=5)
    second = await stack.stub.EnhancePrompt(request(), timeout=5)
    assert len(stack.emulators["groq"].calls) == 1
    assert second.cached and second.prompt == first.prompt and second.provider == "groq"
    assert second.usage.input_tokens == 0 and second.usage.output_tokens == 0
    await stack.stub.EnhancePrompt(request(style="storybook"), timeout=5)
    await stack.stub.EnhancePrompt(request(image_model="sdxl"), timeout=5)
    assert len(stack.emulators["groq"].calls) == 3


async def test_cached_rewrite_expires_after_its_ttl(stack: EnhancerStack) -> None:
    await stack.stub.EnhancePrompt(request(), timeout=5)
    stack.clock.now += stack.enhancer.settings.cache_ttl_seconds + 1
    resp = await stack.stub.EnhancePrompt(request(), timeout=5)
    assert not resp.cached
    assert len(stack.emulators["groq"].calls) == 2


async def test_rate_limit_fails_over_and_retry_after_keeps_the_provider_skipped(
    stack: EnhancerStack,
) -> None:
    stack.emulators["groq"].faults.set(Fault("rate_limit", count=1, retry_after=20))
    resp = await stack.stub.EnhancePrompt(request(), timeout=5)
    assert resp.provider == "cerebras"
    assert [(f.provider, f.reason) for f in resp.failures] == [("groq", "PROVIDER_RATE_LIMITED")]
    resp = await stack.stub.EnhancePrompt(request(prompt="wizard"), timeout=5)
    assert resp.provider == "cerebras"
    assert [(f.provider, f.reason) for f in resp.failures] == [("groq", "BREAKER_OPEN")]
    assert len(stack.emulators["groq"].calls) == 1
    listed = await stack.stub.ListTextProviders(enhancer_pb2.ListTextProvidersRequest(), timeout=5)
    groq = next(p for p in listed.providers if p.name == "groq")
    assert groq.breaker_open and 0 < groq.retry_in_seconds <= 30
    stack.clock.now += 31
    resp = await stack.stub.EnhancePrompt(request(prompt="archer"), timeout=5)
    assert resp.provider == "groq"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("error_500", "PROVIDER_UNAVAILABLE"),
        ("error_502", "PROVIDER_UNAVAILABLE"),
        ("error_503", "PROVIDER_UNAVAILABLE"),
        ("malformed_json", "PROVIDER_BAD_RESPONSE"),
        ("auth_failed", "PROVIDER_AUTH_FAILED"),
    ],
)
async def test_provider_faults_fail_over_to_the_next_provider(
    stack: EnhancerStack, kind: str, reason: str
) -> None:
    stack.emulators["groq"].faults.set(Fault(kind, count=1))
    resp = await stack.stub.EnhancePrompt(request(), timeout=5)
    assert resp.provider == "cerebras"
    assert [(f.provider, f.reason) for f in resp.failures] == [("groq", reason)]
    assert KEYS["groq"] not in resp.failures[0].message


async def test_hanging_provider_leaves_time_for_the_next_within_the_deadline(
    stack: EnhancerStack,
) -> None:
    stack.emulators["groq"].faults.set(Fault("hang"))
    resp = await stack.stub.EnhancePrompt(request(), timeout=4.0)
    assert resp.provider == "cerebras"
    assert [(f.provider, f.reason) for f in resp.failures] == [("groq", "PROVIDER_TIMEOUT")]


async def test_every_provider_failing_is_unavailable_with_each_reason(
    stack: EnhancerStack,
) -> None:
    stack.emulators["groq"].faults.set(Fault("error_503", retry_after=9))
    stack.emulators["cerebras"].faults.set(Fault("malformed_json"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.stub.EnhancePrompt(request(), timeout=5)
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.UNAVAILABLE
    assert parsed.reason == "ENHANCER_UNAVAILABLE"
    assert parsed.domain == "imagegate.enhancer"
    assert "groq: PROVIDER_UNAVAILABLE" in parsed.metadata["failures"]
    assert "cerebras: PROVIDER_BAD_RESPONSE" in parsed.metadata["failures"]
    assert parsed.retry_after_seconds is not None and parsed.retry_after_seconds > 0


async def test_invalid_request_names_the_field() -> None:
    s = await start_enhancer_stack()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.EnhancePrompt(request(prompt=" ", max_prompt_chars=9000), timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert {v.field for v in parsed.field_violations} == {"prompt", "max_prompt_chars"}
        assert not s.emulators["groq"].calls
    finally:
        await s.stop()


async def test_no_provider_key_is_failed_precondition() -> None:
    s = await start_enhancer_stack(groq_key=None, cerebras_key=None)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.EnhancePrompt(request(), timeout=5)
        parsed = parse_rpc_error(info.value)
        assert parsed.code == grpc.StatusCode.FAILED_PRECONDITION
        assert parsed.reason == "ENHANCER_NOT_CONFIGURED"
    finally:
        await s.stop()


def test_answer_reader_takes_fenced_json_bare_text_and_caps_the_length() -> None:
    from services.enhancer.instructions import read_answer

    req = request(max_prompt_chars=20)
    fenced = (
        "```json\n" + json.dumps({"prompt": "a knight in armour", "negative_prompt": "x"}) + "\n```"
    )
    assert read_answer(fenced, req) == ("a knight in armour", "x")
    assert read_answer("a   plain answer that is rather long", req) == (
        "a plain answer that",
        "blurry, text",
    )
    assert read_answer('{"prompt": 3}', req) is None
    assert read_answer("{not json", req) is None


async def test_calls_cache_lookups_and_tokens_are_counted_per_provider() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from imagegate.telemetry import setup_telemetry

    telemetry = setup_telemetry("enhancer-test")
    reader = InMemoryMetricReader()
    telemetry.meter_provider = MeterProvider(metric_readers=[reader])
    s = await start_enhancer_stack(telemetry=telemetry)
    try:
        s.emulators["groq"].faults.set(Fault("error_500", count=1))
        await s.stub.EnhancePrompt(request(), timeout=5)
        await s.stub.EnhancePrompt(request(), timeout=5)
        points: dict[str, dict[tuple[tuple[str, object], ...], int]] = {}
        data = reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if not m.name.startswith("imagegate.enhancer."):
                        continue
                    for p in m.data.data_points:
                        key = tuple(sorted(p.attributes.items()))
                        points.setdefault(m.name, {})[key] = p.value
        calls = points["imagegate.enhancer.provider.calls"]
        assert calls[(("outcome", "PROVIDER_UNAVAILABLE"), ("provider", "groq"))] == 1
        assert calls[(("outcome", "ok"), ("provider", "cerebras"))] == 1
        lookups = points["imagegate.enhancer.cache.lookups"]
        assert lookups[(("result", "miss"),)] == 1 and lookups[(("result", "hit"),)] == 1
        tokens = points["imagegate.enhancer.tokens"]
        assert tokens[(("direction", "output"), ("provider", "cerebras"))] > 0
    finally:
        await s.stop()
        telemetry.shutdown()
