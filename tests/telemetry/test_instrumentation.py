"""Helpers for httpx, SQLAlchemy, quota and adapter gauges, and prompt recording."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import create_engine, text

from imagegate.telemetry import TelemetrySettings, setup_telemetry
from imagegate.telemetry.metrics import QuotaMetrics, QuotaSample, register_adapter_gauges


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


async def test_httpx_calls_are_children_of_the_current_span_with_semconv_metrics():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry("adapter-fal", span_exporters=[spans], metric_readers=[reader])

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["traceparent"].split("-")[1] == f"{parent_ctx.trace_id:032x}"
        return httpx.Response(503, json={"detail": "overloaded"})

    client = httpx.AsyncClient(
        transport=httpx.MockTransport(answer),
        base_url="https://queue.fal.run",
        headers={"Authorization": "Key secret-id:secret-value-1234567890"},
    )
    telemetry.instrument_httpx(client)
    with telemetry.tracer.start_as_current_span("adapter.generate") as parent:
        parent_ctx = parent.get_span_context()
        response = await client.post("/fal-ai/flux/dev?x=1", json={"prompt": "a cat"})
    await client.aclose()
    assert response.status_code == 503
    (http_span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert http_span.parent is not None and http_span.parent.span_id == parent_ctx.span_id
    assert http_span.attributes["http.request.method"] == "POST"
    assert http_span.attributes["http.response.status_code"] == 503
    assert http_span.status.status_code.name == "ERROR"
    flat = repr(dict(http_span.attributes))
    assert "secret-value" not in flat and "a cat" not in flat
    assert "http.client.request.duration" in _points(reader)
    telemetry.shutdown()


async def test_sqlalchemy_statements_are_spans_of_this_service_under_the_rpc(tmp_path):
    spans = InMemorySpanExporter()
    quota = setup_telemetry("quota", span_exporters=[spans])
    other_spans = InMemorySpanExporter()
    metering = setup_telemetry("metering", span_exporters=[other_spans])
    engine = create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    quota.instrument_sqlalchemy(engine)

    def transaction() -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (tenant TEXT, secret TEXT)"))
            conn.execute(
                text("INSERT INTO t VALUES (:tenant, :secret)"),
                {"tenant": "t1", "secret": "ig_abc_DONOTLEAKME123"},
            )

    # Quota and Metering run sync engines in worker threads; the context must follow.
    with quota.tracer.start_as_current_span("quota.reserve") as parent:
        await asyncio.to_thread(transaction)
    engine.dispose()
    db_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert len(db_spans) >= 2
    for span in db_spans:
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert (
            span.attributes.get("db.system") == "sqlite"
            or span.attributes.get("db.system.name") == "sqlite"
        )
        assert "DONOTLEAKME" not in repr(dict(span.attributes))  # SQL text only, no parameters
    assert other_spans.get_finished_spans() == ()  # another service's provider untouched
    quota.shutdown()
    metering.shutdown()


def test_quota_gauges_report_used_limit_remaining_per_tenant_and_bound_cardinality():
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("quota", metric_readers=[reader])
    gauges = QuotaMetrics(telemetry, max_series=2)
    gauges.update(QuotaSample("t-old", "micro_usd", used=1, limit=10))
    gauges.update(QuotaSample("t1", "micro_usd", used=300_000, limit=1_000_000))
    gauges.update(QuotaSample("t2", "images", used=5, limit=0))  # unlimited
    points = _points(reader)

    def by_tenant(name: str) -> dict[str, int]:
        return {p.attributes["imagegate.tenant_id"]: p.value for p in points.get(name, [])}

    assert by_tenant("imagegate.quota.used") == {"t1": 300_000, "t2": 5}  # t-old evicted
    assert by_tenant("imagegate.quota.limit") == {"t1": 1_000_000}
    assert by_tenant("imagegate.quota.remaining") == {"t1": 700_000}
    gauges.forget("t1")
    assert by_tenant_after(reader, "imagegate.quota.used") == {"t2": 5}
    telemetry.shutdown()


def by_tenant_after(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    return {p.attributes["imagegate.tenant_id"]: p.value for p in _points(reader).get(name, [])}


def test_adapter_in_flight_gauge_reads_the_live_value():
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("adapter-fal", metric_readers=[reader])
    state = {"n": 3}
    register_adapter_gauges(telemetry, "fal", in_flight=lambda: state["n"], limit=lambda: 16)
    first = _points(reader)
    state["n"] = 1
    second = _points(reader)
    assert [p.value for p in first["imagegate.adapter.in_flight"]] == [3]
    assert [p.value for p in second["imagegate.adapter.in_flight"]] == [1]
    assert second["imagegate.adapter.in_flight"][0].attributes == {"imagegate.provider": "fal"}
    assert [p.value for p in second["imagegate.adapter.concurrency_limit"]] == [16]
    telemetry.shutdown()


def test_prompts_are_not_recorded_by_default_and_truncated_and_redacted_when_enabled(monkeypatch):
    prompt = "a castle at dusk, use key sk-proj-AbCdEfGhIjKlMnOp " + "x" * 500
    default = setup_telemetry("router")
    assert default.record_prompts is False
    assert default.prompt_attributes(prompt) == {"imagegate.prompt.length": len(prompt)}
    monkeypatch.setenv("IMAGEGATE_TELEMETRY_RECORD_PROMPTS", "true")
    monkeypatch.setenv("IMAGEGATE_TELEMETRY_PROMPT_MAX_CHARS", "60")
    enabled = setup_telemetry("router")
    attrs = enabled.prompt_attributes(prompt)
    assert enabled.record_prompts is True
    assert str(attrs["imagegate.prompt"]).startswith("a castle at dusk")
    assert "AbCdEfGh" not in str(attrs["imagegate.prompt"])
    assert len(str(attrs["imagegate.prompt"])) <= 60
    explicit = setup_telemetry("router", settings=TelemetrySettings(record_prompts=False))
    assert "imagegate.prompt" not in explicit.prompt_attributes(prompt)
    for t in (default, enabled, explicit):
        t.shutdown()


def test_second_histograms_get_second_buckets_even_without_advice():
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("router", metric_readers=[reader])
    # Created the way the Router creates its histograms: unit "s", no bucket advice.
    histogram = telemetry.meter.create_histogram("imagegate.router.overhead", unit="s")
    for value in (0.0004, 0.0012, 0.0019, 0.8):
        histogram.record(value)
    (point,) = _points(reader)["imagegate.router.overhead"]
    bounds = list(point.explicit_bounds)
    assert bounds[0] <= 0.0005 and 300.0 in bounds
    counts = dict(zip([*bounds, float("inf")], point.bucket_counts, strict=True))
    assert counts[0.0005] == 1 and counts[0.0015] == 1 and counts[0.002] == 1 and counts[1.0] == 1
    telemetry.shutdown()
