"""Issue 6 "Done means": one trace across Router, Quota, both adapters, provider HTTP and Metering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from imagegate.emulators.base import Fault
from imagegate.router.v1 import router_pb2
from imagegate.telemetry import setup_telemetry

from .stack import (
    ADMIN_TOKEN,
    FAL_KEY,
    TOGETHER_KEY,
    TracedStack,
    start_traced_stack,
)

PROMPT = "zebra quokka lighthouse at dawn 7731"
ROUTER_RPC = "imagegate.router.v1.RouterService/GenerateImage"
ADAPTER_RPC = "imagegate.provider.v1.ProviderService/GenerateImage"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[TracedStack]:
    running = await start_traced_stack(tmp_path / "data")
    yield running
    await running.aclose()


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    out = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        out.append(span)
    return out


def _child(
    parent: ReadableSpan, spans: list[ReadableSpan], *, kind: SpanKind, service: str, name: str = ""
) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == parent.context.span_id
        and s.kind is kind
        and _service(s) == service
        and (not name or s.name == name)
    ]
    assert len(found) == 1, f"want one {kind.name} {name} of {service} under {parent.name}: {found}"
    return found[0]


async def _wait_for(stack: TracedStack, trace_id: int, service: str, name: str) -> None:
    # Settlement may finish after the response; poll the exporter, bounded.
    for _ in range(200):
        if any(
            s.context.trace_id == trace_id and _service(s) == service and s.name == name
            for s in stack.finished()
        ):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {service} {name} span in trace {trace_id:032x}")


def _everything_recorded(stack: TracedStack) -> str:
    parts = []
    for s in stack.finished():
        parts.append(s.name)
        parts.append(json.dumps(dict(s.attributes or {}), default=str))
        parts.append(json.dumps(dict(s.resource.attributes), default=str))
        parts.append(s.status.description or "")
        for event in s.events:
            parts.append(event.name + json.dumps(dict(event.attributes or {}), default=str))
    return "\n".join(parts)


async def test_one_trace_tells_the_whole_failover_story(stack: TracedStack):
    caller_spans = InMemorySpanExporter()
    caller = setup_telemetry("caller", span_exporters=[caller_spans])
    stack.fal.faults.set(Fault("error_503", count=1))
    metadata = [("authorization", f"Bearer {stack.api_key}")]
    with caller.tracer.start_as_current_span("support-ticket-repro") as caller_span:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        call = stack.router.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="trace-1",
                prompt=PROMPT,
                model="flux-schnell",
                width=512,
                height=512,
                num_images=1,
            ),
            metadata=[*metadata, *carrier.items()],
            timeout=20,
        )
        response = await call
    caller.shutdown()
    trailing = dict(await call.trailing_metadata())

    # The caller's trace is continued and quoted back to it.
    trace_id = caller_span.get_span_context().trace_id
    assert response.trace_id == f"{trace_id:032x}"
    assert trailing["x-imagegate-trace-id"] == response.trace_id
    assert float(trailing["x-imagegate-overhead-ms"]) >= 0
    assert [(a.provider, a.outcome) for a in response.attempts] == [
        ("fal", router_pb2.ATTEMPT_OUTCOME_UNAVAILABLE),
        ("together", router_pb2.ATTEMPT_OUTCOME_SUCCEEDED),
    ]

    await _wait_for(
        stack, trace_id, "imagegate-metering", "imagegate.metering.v1.MeteringService/RecordUsage"
    )
    spans = [s for s in stack.finished() if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in spans}

    # Router server span: child of the caller's span.
    (root,) = [s for s in spans if s.name == ROUTER_RPC and s.kind is SpanKind.SERVER]
    assert root.parent is not None and root.parent.is_remote
    assert root.parent.span_id == caller_span.get_span_context().span_id
    assert root.attributes["rpc.grpc.status_code"] == 0

    # The request span and its business attributes.
    (request_span,) = [s for s in spans if s.name == "router.generate"]
    assert root in _ancestors(request_span, by_id)
    attrs = request_span.attributes
    assert attrs["imagegate.tenant_id"].startswith("t_")
    assert attrs["imagegate.model"] == "flux-schnell"
    assert attrs["imagegate.outcome"] == "succeeded"
    assert attrs["imagegate.attempts"] == 2
    assert attrs["imagegate.provider"] == "together"
    assert attrs["imagegate.cost_micros"] == response.cost_micros > 0
    assert attrs["imagegate.images"] == 1
    assert attrs["imagegate.megapixels"] == pytest.approx(512 * 512 / 1e6)
    assert "imagegate.preference" in attrs
    failovers = [e for s in spans for e in s.events if e.name == "failover"]
    assert len(failovers) == 1
    assert "fal" in json.dumps(dict(failovers[0].attributes or {}))

    # Quota: reached from the Router's client spans, each with SQL children.
    quota_servers = [
        s for s in spans if _service(s) == "imagegate-quota" and s.kind is SpanKind.SERVER
    ]
    assert {s.attributes["rpc.method"] for s in quota_servers} >= {"ReserveQuota"}
    for server in quota_servers:
        client = by_id[server.parent.span_id]
        assert client.kind is SpanKind.CLIENT and _service(client) == "imagegate-router"
        assert client.name == server.name  # same "pkg.Service/Method" on both sides
        assert root in _ancestors(server, by_id)
        sql = [
            s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
        ]
        assert sql and all(s.attributes.get("db.system") == "sqlite" for s in sql)

    # Two attempts, in order, each down to the adapter's server span and its provider HTTP call.
    attempts = sorted(
        (s for s in spans if s.name == "router.attempt"),
        key=lambda s: s.attributes["imagegate.attempt_number"],
    )
    assert [a.attributes["imagegate.provider"] for a in attempts] == ["fal", "together"]
    assert [a.attributes["imagegate.attempt_number"] for a in attempts] == [1, 2]
    assert [a.attributes["imagegate.outcome"] for a in attempts] == ["unavailable", "succeeded"]
    assert attempts[0].attributes["imagegate.error_reason"] == "PROVIDER_UNAVAILABLE"
    assert all(a.attributes["imagegate.breaker_state"] == "closed" for a in attempts)
    assert attempts[0].attributes["imagegate.provider_model"] == "fal-ai/flux/schnell"
    for attempt, service, http_status, grpc_code in (
        (attempts[0], "imagegate-adapter-fal", 503, 14),
        (attempts[1], "imagegate-adapter-together", 200, 0),
    ):
        assert request_span in _ancestors(attempt, by_id)
        client = _child(
            attempt, spans, kind=SpanKind.CLIENT, service="imagegate-router", name=ADAPTER_RPC
        )
        server = _child(client, spans, kind=SpanKind.SERVER, service=service, name=ADAPTER_RPC)
        assert server.attributes["rpc.grpc.status_code"] == grpc_code
        http = [
            s
            for s in spans
            if s.parent is not None
            and s.parent.span_id == server.context.span_id
            and s.kind is SpanKind.CLIENT
        ]
        assert http, f"no provider HTTP span under {service}"
        assert http[0].attributes["http.request.method"] == "POST"
        assert http[0].attributes["http.response.status_code"] == http_status
    assert attempts[0].end_time <= attempts[1].start_time

    # Metering: the usage record belongs to the same trace, under the Router.
    (record,) = [
        s for s in spans if _service(s) == "imagegate-metering" and s.kind is SpanKind.SERVER
    ]
    assert by_id[record.parent.span_id].kind is SpanKind.CLIENT
    assert root in _ancestors(record, by_id)

    # Nothing secret anywhere: API key, provider keys, admin token, prompt (off by default).
    recorded = _everything_recorded(stack)
    logs = stack.logs.getvalue()
    # ig_<hex key id>_<urlsafe secret>: the secret itself may contain "_".
    secret_part = stack.api_key.split("_", 2)[2]
    for needle in (
        stack.api_key,
        secret_part,
        FAL_KEY,
        FAL_KEY.split(":")[1],
        TOGETHER_KEY,
        ADMIN_TOKEN,
        PROMPT,
        "quokka",
    ):
        assert needle not in recorded, needle
        assert needle not in logs, needle

    # One JSON line for the request's outcome, carrying the same trace id.
    outcome_lines = [
        json.loads(line)
        for line in logs.splitlines()
        if line.startswith("{") and json.loads(line).get("msg") == "request finished"
    ]
    assert [line["trace_id"] for line in outcome_lines] == [response.trace_id]
    assert outcome_lines[0]["outcome"] == "succeeded" and outcome_lines[0]["attempts"] == 2


async def test_a_caller_without_traceparent_starts_a_trace_and_prompts_record_only_when_enabled(
    tmp_path: Path,
):
    stack = await start_traced_stack(tmp_path / "data", record_prompts=True)
    try:
        response = await stack.router.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="trace-2",
                prompt=PROMPT,
                model="flux-schnell",
                width=512,
                height=512,
                num_images=1,
            ),
            metadata=[("authorization", f"Bearer {stack.api_key}")],
            timeout=20,
        )
    finally:
        await stack.aclose()
    trace_id = int(response.trace_id, 16)
    (root,) = [
        s for s in stack.finished() if s.name == ROUTER_RPC and s.context.trace_id == trace_id
    ]
    assert root.parent is None  # a new trace, started at the Router
    (request_span,) = [s for s in stack.finished() if s.name == "router.generate"]
    assert PROMPT.startswith(str(request_span.attributes["imagegate.prompt"]))
    assert [a.provider for a in response.attempts] == ["fal"]  # no fault: no failover


async def test_a_batched_reserve_is_one_quota_span_linked_to_every_request_it_served(
    stack: TracedStack,
):
    md = [("authorization", f"Bearer {stack.api_key}")]
    responses = await asyncio.gather(
        *(
            stack.router.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=f"batch-{i}",
                    prompt=PROMPT,
                    model="flux-schnell",
                    width=512,
                    height=512,
                ),
                metadata=md,
                timeout=20,
            )
            for i in range(24)
        )
    )
    traces = {int(r.trace_id, 16) for r in responses}
    rounds = [s for s in stack.finished() if s.name == "quota.batch_reserve"]
    assert rounds, "24 concurrent requests should share at least one reserve round trip"
    for span in rounds:
        linked = {link.context.trace_id for link in span.links}
        assert len(linked) == span.attributes["imagegate.batch_size"] >= 2
        assert linked <= traces  # each link leads to the trace of a request it reserved for
        assert span.context.trace_id not in traces  # a trace of its own, parent of none of them
        # Each request's trace names the round its reserve went in.
        told = {
            s.context.trace_id
            for s in stack.finished()
            for e in s.events
            if e.name == "quota reserve sent in a batch"
            and e.attributes["imagegate.batch_trace_id"] == f"{span.context.trace_id:032x}"
        }
        assert told == linked
        # Quota's side of the batch call is a child of the round, not of any request.
        assert [
            s
            for s in stack.finished()
            if s.parent is not None
            and s.context.trace_id == span.context.trace_id
            and _service(s) == "imagegate-quota"
            and s.name.endswith("BatchReserveQuota")
            and s.kind is SpanKind.SERVER
        ]
