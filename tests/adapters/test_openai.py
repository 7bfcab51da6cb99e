"""OpenAI adapter over real gRPC against its emulator: usage tokens, sizes, moderation, quota."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from pydantic import SecretStr

from imagegate.common.v1 import image_pb2
from imagegate.emulators.base import Fault
from imagegate.emulators.openai import OUTPUT_TOKENS, OpenAIEmulator, prompt_tokens
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ParsedStatus, parse_rpc_error
from imagegate.grpckit.server import RunningServer
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.openai import wire
from services.openai.adapter import OpenAIAdapter
from services.openai.config import OpenAISettings

KEY = "sk-proj-unit-secret-a1b2c3d4e5"
PROMPT = "a watercolour map of an island with a small harbour"


@dataclass
class Stack:
    emulator: OpenAIEmulator
    server: RunningServer
    channel: grpc.aio.Channel
    stub: provider_pb2_grpc.ProviderServiceStub
    spans: InMemorySpanExporter
    adapter: Adapter

    async def fail(
        self, request: provider_pb2.GenerateImageRequest, timeout: float = 10
    ) -> ParsedStatus:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.stub.GenerateImage(request, timeout=timeout)
        return parse_rpc_error(info.value)

    def body(self) -> dict:
        return self.emulator.calls_to("/v1/images/generations")[-1].body


async def _stack(**settings: object) -> Stack:
    emulator = OpenAIEmulator(key=KEY)
    base_url = await emulator.start()
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("test-openai", span_exporters=[spans])
    adapter = OpenAIAdapter(
        OpenAISettings(key=SecretStr(KEY), base_url=base_url, **settings),  # type: ignore[arg-type]
        telemetry=telemetry,
    )
    server, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    channel = create_channel(server.address)
    return Stack(
        emulator, server, channel, provider_pb2_grpc.ProviderServiceStub(channel), spans, adapter
    )


async def _close(s: Stack) -> None:
    await s.channel.close()
    await s.server.stop(0)
    await s.adapter.aclose()
    await s.emulator.stop()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await _stack()
    yield s
    await _close(s)


def _req(**kw: object) -> provider_pb2.GenerateImageRequest:
    fields: dict[str, object] = dict(
        request_id="r-oa",
        model="gpt-image-1",
        prompt=PROMPT,
        width=1024,
        height=1024,
        num_images=1,
    )
    fields.update(kw)
    return provider_pb2.GenerateImageRequest(**fields)  # type: ignore[arg-type]


async def test_usage_tokens_and_request_id_are_reported(stack: Stack) -> None:
    resp = await stack.stub.GenerateImage(_req(num_images=2), timeout=10)
    assert resp.usage.input_tokens == prompt_tokens(PROMPT)
    assert resp.usage.output_tokens == 2 * OUTPUT_TOKENS["medium"]["1024x1024"]
    assert resp.usage.provider_job_id.startswith("req_")
    assert resp.usage.images == 2
    assert resp.usage.provider_seconds == 0
    body = stack.body()
    assert body == {
        "model": "gpt-image-1",
        "prompt": PROMPT,
        "n": 2,
        "size": "1024x1024",
        "output_format": "png",
        "quality": "auto",
        "moderation": "auto",
    }


async def test_quality_setting_and_landscape_size_change_the_token_count() -> None:
    s = await _stack(quality="high", moderation="low", organization="org-1", project="proj_1")
    try:
        resp = await s.stub.GenerateImage(
            _req(
                width=1536,
                height=1024,
                model="gpt-image-1-mini",
                output_format=image_pb2.IMAGE_FORMAT_WEBP,
            ),
            timeout=10,
        )
        assert resp.usage.output_tokens == OUTPUT_TOKENS["high"]["1536x1024"]
        body = s.body()
        assert (body["quality"], body["moderation"], body["size"], body["output_format"]) == (
            "high",
            "low",
            "1536x1024",
            "webp",
        )
        headers = s.emulator.calls[-1].headers
        assert (headers["openai-organization"], headers["openai-project"]) == ("org-1", "proj_1")
        img = Image.open(io.BytesIO(resp.images[0].data))
        assert (img.format, img.size) == ("WEBP", (1536, 1024))
    finally:
        await _close(s)


async def test_only_fixed_sizes_and_no_seed_or_negative_prompt_are_declared(stack: Stack) -> None:
    describe = await stack.stub.DescribeProvider(provider_pb2.DescribeProviderRequest())
    assert sorted(m.id for m in describe.models) == ["gpt-image-1", "gpt-image-1-mini"]
    for m in describe.models:
        caps = m.capabilities
        assert sorted((s.width, s.height) for s in caps.fixed_sizes) == sorted(wire.FIXED_SIZES)
        assert not (caps.seed or caps.negative_prompt or caps.steps or caps.guidance)
    err = await stack.fail(_req(model="dall-e-3"))
    assert err.reason == reasons.UNKNOWN_MODEL, "retired DALL-E models are not offered"
    for bad in (_req(width=1000, height=700), _req(seed=1), _req(negative_prompt="text")):
        err = await stack.fail(bad)
        assert (err.code, err.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.PROVIDER_UNSUPPORTED_PARAMETER,
        )
    assert stack.emulator.calls == []


async def test_degradation_maps_to_a_fixed_size_and_drops_seed_with_deviations(
    stack: Stack,
) -> None:
    resp = await stack.stub.GenerateImage(
        _req(width=1200, height=800, seed=9, negative_prompt="text", allow_degradation=True),
        timeout=10,
    )
    assert stack.body()["size"] == "1536x1024"
    assert "seed" not in stack.body() and "negative_prompt" not in stack.body()
    assert (resp.images[0].width, resp.images[0].height) == (1536, 1024)
    assert {d.field: d.delivered for d in resp.deviations} == {
        "size": "1536x1024",
        "seed": "",
        "negative_prompt": "",
    }


@pytest.mark.parametrize("code", ["moderation_blocked", "content_policy_violation"])
async def test_both_moderation_codes_are_content_moderated(stack: Stack, code: str) -> None:
    stack.emulator.moderation_code = code
    stack.emulator.faults.set(Fault("moderation", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_CONTENT_MODERATED,
    )
    assert err.metadata["provider_code"] == code
    assert err.metadata[reasons.META_BILLABLE] == "false"
    assert err.retry_after_seconds is None


async def test_insufficient_quota_is_out_of_credits_not_a_rate_limit(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("out_of_credits", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_OUT_OF_CREDITS,
    )
    assert err.metadata[reasons.META_HTTP_STATUS] == "429"
    assert err.metadata["provider_code"] == "insufficient_quota"
    assert err.retry_after_seconds is None


async def test_rate_limit_prefers_retry_after_ms(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("rate_limit", count=1, retry_after=2.5))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reasons.PROVIDER_RATE_LIMITED,
    )
    assert err.retry_after_seconds == pytest.approx(2.5), "retry-after says 3, retry-after-ms 2500"


def _response(status: int, error: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": error},
        headers=headers,
        request=httpx.Request(
            "POST",
            "https://api.openai.com/v1/images/generations",
            headers={"authorization": f"Bearer {KEY}"},
        ),
    )


def test_rate_limit_without_headers_reads_the_message() -> None:
    resp = _response(
        429, {"code": "rate_limit_exceeded", "message": "Limit: 5/1min. Please try again in 850ms."}
    )
    err = wire.special_error(resp, "req_1")
    assert err is not None and err.reason == reasons.PROVIDER_RATE_LIMITED
    assert err.retry_after_seconds == pytest.approx(0.85)
    assert wire.retry_after_from_message("Please try again in 6.5s.") == 6.5
    assert wire.retry_after_from_message("no hint") is None


def test_billing_hard_limit_is_out_of_credits_and_unknown_codes_use_the_table() -> None:
    err = wire.special_error(
        _response(
            400,
            {
                "code": "billing_hard_limit_reached",
                "message": "Billing hard limit has been reached",
            },
        ),
        "",
    )
    assert err is not None and err.reason == reasons.PROVIDER_OUT_OF_CREDITS
    assert wire.special_error(_response(400, {"code": "invalid_value", "message": "x"}), "") is None


async def test_a_url_instead_of_base64_is_a_clean_bad_response(stack: Stack) -> None:
    stack.emulator.faults.set(Fault("expired_url", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_BAD_RESPONSE)
    assert "b64_json" in err.message
    assert err.metadata[reasons.META_BILLABLE] == "true"


async def test_key_echoed_by_the_provider_never_leaks(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack.emulator.faults.set(Fault("auth_failed", count=1))
    err = await stack.fail(_req())
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROVIDER_AUTH_FAILED,
    )
    assert "[redacted]" in err.message, "the emulator echoes the key; it must be scrubbed"
    assert KEY not in err.message and KEY not in repr(err.metadata)
    await stack.stub.GenerateImage(_req(), timeout=10)
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in repr(vars(record))
    spans = stack.spans.get_finished_spans()
    assert any(s.kind.name == "CLIENT" for s in spans), "provider HTTP calls are traced"
    for span in spans:
        assert KEY not in span.name
        assert KEY not in repr(dict(span.attributes or {}))
        assert all(KEY not in repr(dict(e.attributes or {})) for e in span.events)
    assert all(c.headers["authorization"] == f"Bearer {KEY}" for c in stack.emulator.calls)


def test_settings_read_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("IMAGEGATE_OPENAI_BASE_URL", "https://proxy.example/v1")
    settings = OpenAISettings()
    assert settings.enabled and settings.addr == "127.0.0.1:50065"
    assert OpenAIAdapter(settings).base_url == "https://proxy.example"
    assert KEY not in repr(settings)
    monkeypatch.setenv("IMAGEGATE_OPENAI_BASE_URL", "http://proxy.example")
    with pytest.raises(ValueError, match="https"):
        OpenAISettings()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("IMAGEGATE_OPENAI_BASE_URL")
    assert not OpenAISettings().enabled
