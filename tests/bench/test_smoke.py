"""`python -m bench --smoke` runs every scenario end to end and writes well-formed results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCENARIOS = ("overhead", "capacity", "failover", "quota", "tracing")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _doc(out: Path) -> dict:
    (path,) = out.glob("*-smoke.json")
    return json.loads(path.read_text())


def _scenario(out: Path, key: str) -> dict:
    return next(s for s in _doc(out)["scenarios"] if s["key"] == key)


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_every_scenario_ran_without_failing(smoke_results: Path):
    doc = _doc(smoke_results)
    assert doc["meta"]["smoke"] is True
    assert [s["key"] for s in doc["scenarios"]] == list(SCENARIOS)
    for sc in doc["scenarios"]:
        assert "error" not in sc, sc["error"]
        assert sc["targets"], f"{sc['key']} judged no target"
        for t in sc["targets"]:
            assert set(t) == {"name", "goal", "measured", "met"}


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_overhead_measured_all_three_paths_with_router_metadata(smoke_results: Path):
    runs = _scenario(smoke_results, "overhead")["runs"]
    labels = {(r["label"], r["concurrency"]) for r in runs}
    paths = ("echo", "direct", "floor", "router")
    assert labels == {(p, c) for p in paths for c in (1, 16, 64)} | {
        ("router, no request_id", 1),
        ("floor, batched", 16),
        ("floor, batched", 64),
    }
    for r in runs:
        assert r["ok"] > 0 and r["rps"] > 0 and r["p50_ms"] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    router = [r for r in runs if r["label"].startswith("router")]
    assert all(r["router_overhead_ms"]["p50"] > 0 for r in router)
    assert all("p50_ms" in r["added_over_direct"] for r in router)
    floor = [r for r in runs if r["label"].startswith("floor")]
    assert all(r["server_cpu_ms_per_req"] > 0 and "p50_ms" in r["added_over_echo"] for r in floor)
    targets = [t["name"] for t in _scenario(smoke_results, "overhead")["targets"]]
    assert any(name.startswith("CPU per request, every gateway process") for name in targets)


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_capacity_quota_tracing_and_failover_produced_numbers(smoke_results: Path):
    cap = _scenario(smoke_results, "capacity")["runs"]
    assert len(cap) == 4 and all(r["requests"] > 0 for r in cap)
    assert all(r["peak_rss_mb"]["router"] > 0 for r in cap)
    quota = _scenario(smoke_results, "quota")["runs"]
    variants = {r["label"].split("(")[1].rstrip(")") for r in quota}
    assert variants == {
        f"{db}, {how}" for db in ("sqlite", "postgresql") for how in ("gRPC", "direct store")
    }
    assert all(r["ok"] > 0 and not r["errors"] for r in quota)
    tracing = _scenario(smoke_results, "tracing")
    assert tracing["extra"]["otlp_sink"]["spans"] > 0
    labels = {r["label"] for r in tracing["runs"]}
    assert {"router, tracing on", "router, tracing off", "router, SDK disabled"} <= labels
    failover = _scenario(smoke_results, "failover")["extra"]["phases"]
    assert set(failover) == {"error_503", "hang", "refused"}
    for phase in failover.values():
        assert len(phase["first20_ms"]) == 20
        assert phase["steady_errors"] == 0
        # Read with the admin token: a tenant key is not shown latencies.
        assert phase["primary_usual_p95_ms"] > 0


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_markdown_table_and_png_chart_written(smoke_results: Path):
    (md,) = smoke_results.glob("*-smoke.md")
    text = md.read_text()
    assert "| target | goal | measured | met |" in text
    for title in (
        "1. Overhead",
        "2. Slow provider capacity",
        "3. Failover",
        "4. Quota",
        "5. Tracing",
    ):
        assert f"## {title}" in text
    (png,) = smoke_results.glob("*-smoke.png")
    img = Image.open(io.BytesIO(png.read_bytes()))
    img.load()
    assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 300
