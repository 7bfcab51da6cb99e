"""Log lines, JSON or text, carry trace ids and extras and never a credential or image bytes."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from imagegate.telemetry import setup_telemetry
from imagegate.telemetry.logs import JsonFormatter, RedactingFilter, TextFormatter
from imagegate.telemetry.redact import redact

SECRETS = {
    "imagegate key": "ig_k3y1d_Zx9sT2uVw8yQ4rB6nM1pL0",
    "fal key": "Key 5f1c2b3a-7d8e-4f90-a1b2-c3d4e5f6a7b8:0f9e8d7c6b5a49382716",
    "replicate token": "r8_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "hf token": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz",
    "openai key": "sk-proj-AbCdEfGhIjKlMnOpQrSt",
    "bearer": "Bearer 0123456789abcdefABCDEF",
}


@pytest.fixture
def capture():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("router"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.telemetry.logs")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield logger, lines
    logger.handlers[:] = []


def test_lines_carry_the_current_trace_and_span_ids(capture):
    logger, lines = capture
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("router", span_exporters=[spans])
    with telemetry.tracer.start_as_current_span("imagegate.request") as span:
        logger.info(
            "request finished",
            extra={"event": "request_outcome", "imagegate.outcome": "ok", "attempts": 2},
        )
    logger.info("outside any span")
    telemetry.shutdown()
    inside, outside = lines()
    ctx = span.get_span_context()
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["service"] == "router"
    assert inside["level"] == "info"
    assert inside["event"] == "request_outcome"
    assert inside["imagegate.outcome"] == "ok"
    assert inside["attempts"] == 2  # numbers stay numbers
    assert inside["ts"].endswith("Z")
    assert "trace_id" not in outside and "span_id" not in outside


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_secrets_are_redacted_in_message_args_extras_and_tracebacks(capture, kind):
    logger, lines = capture
    secret = SECRETS[kind]
    logger.warning("calling provider with %s", secret, extra={"header": f"authorization: {secret}"})
    logger.info(f"inline {secret} in an f-string")
    logger.info("named", extra={"api_key": "anything-at-all", "provider_key": "x"})
    try:
        raise RuntimeError(f"upstream rejected {secret}")
    except RuntimeError:
        logger.exception("provider call failed")
    text = "\n".join(json.dumps(line) for line in lines())
    token = secret.split()[-1]
    assert token not in text
    assert token[-12:] not in text  # no tail of it either
    assert "[REDACTED]" in text
    named = lines()[2]
    assert named["api_key"] == "[REDACTED]" and named["provider_key"] == "[REDACTED]"
    assert "upstream rejected" in lines()[3]["exc"]


def test_our_key_id_survives_redaction_for_support(capture):
    logger, lines = capture
    logger.info("key used: %s", SECRETS["imagegate key"])
    assert lines()[0]["msg"] == "key used: ig_k3y1d_[REDACTED]"


def test_image_bytes_and_base64_payloads_never_reach_a_line(capture):
    logger, lines = capture
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    logger.info(
        "image ready", extra={"data": png, "preview": "data:image/png;base64," + "QUJD" * 400}
    )
    logger.info("raw %s", png)
    logger.info("b64 %s", "iVBORw0KGgo" + "A" * 5000)
    first, second, third = lines()
    assert first["data"] == f"<{len(png)} bytes>"
    assert "QUJD" not in first["preview"]
    assert len(json.dumps(second)) < 1000 and "\\x89PNG" not in json.dumps(second)
    assert "A" * 200 not in third["msg"]


def test_ordinary_prose_is_left_alone():
    for text in (
        "missing key reservation for tenant t-1",
        "Key rotation scheduled",
        "token bucket refilled",
        "breaker fal/flux-dev open -> half_open after 30s",
    ):
        assert redact(text) == text


@pytest.fixture
def text_capture():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("router"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.telemetry.logs.text")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream.getvalue
    logger.handlers[:] = []


def test_text_lines_carry_trace_ids_and_every_extra_field(text_capture):
    logger, text = text_capture
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("router", span_exporters=[spans])
    with telemetry.tracer.start_as_current_span("imagegate.request") as span:
        logger.info(
            "request finished",
            extra={
                "event": "request",
                "outcome": "ok",
                "provider": "fal",
                "model": "flux-schnell",
                "cost_micros": 3000,
                "duration_ms": 812.5,
                "notice": "local stood in",
            },
        )
    logger.info("outside any span", extra={"outcome": "ok"})
    telemetry.shutdown()
    inside, outside = text().splitlines()
    ctx = span.get_span_context()
    assert " router INFO request finished " in inside
    fields = inside.split(" request finished ", 1)[1]
    assert fields.startswith(f"trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x} ")
    for pair in (
        "event=request",
        "outcome=ok",
        "provider=fal",
        "model=flux-schnell",
        "cost_micros=3000",
        "duration_ms=812.5",
        'notice="local stood in"',
    ):
        assert f" {pair}" in f" {fields}", pair
    assert outside.endswith("outside any span outcome=ok")
    assert "trace_id" not in outside


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_text_lines_redact_secrets_like_json_lines(text_capture, kind):
    logger, text = text_capture
    secret = SECRETS[kind]
    logger.warning("calling provider with %s", secret, extra={"header": f"authorization: {secret}"})
    logger.info("named", extra={"api_key": "anything-at-all", "token": "x", "data": b"\x89PNG"})
    try:
        raise RuntimeError(f"upstream rejected {secret}")
    except RuntimeError:
        logger.exception("provider call failed")
    out = text()
    token = secret.split()[-1]
    assert token not in out and token[-12:] not in out
    assert "api_key=[REDACTED] token=[REDACTED]" in out
    assert 'data="<4 bytes>"' in out
    assert "anything-at-all" not in out
    assert "upstream rejected" in out
