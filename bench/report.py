"""Writes bench/results/<date>.json, .md (Markdown tables) and .png (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "0"
    return str(value)


def markdown(doc: dict[str, Any]) -> str:
    """The whole run as Markdown: targets first, then one table per scenario."""
    meta = doc["meta"]
    lines = [
        f"# imagegate bench {meta['date']}{' (smoke)' if meta['smoke'] else ''}",
        "",
        f"{meta['machine']}; Python {meta['python']}, grpcio {meta['grpcio']}; "
        f"total {meta['duration_s']:.0f} s. Latencies in ms, client-side, closed loop. "
        f"Load average at start {meta.get('loadavg_at_start')} (1/5/15 min; anything above "
        "~1 means other work shared the 2 cores).",
        "",
        "## Targets (issues 7, 11, 12 and 14)",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for sc in doc["scenarios"]:
        if sc.get("error"):
            first = sc["error"].splitlines()[0][:160]
            lines.append(f"| {sc['name']} | (all) | scenario failed: {first} | not measured |")
        for t in sc["targets"]:
            met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {met} |")
    for sc in doc["scenarios"]:
        lines += ["", f"## {sc['name']}", "", f"Path: {sc['path']}", ""]
        if sc.get("loadavg_1m"):
            load = sc["loadavg_1m"]
            lines += [
                f"Took {sc.get('duration_s')} s; 1-min load average {load['before']:.1f} before, "
                f"{load['after']:.1f} after.",
                "",
            ]
        if sc.get("error"):
            lines += ["**Scenario failed:**", "", "```", sc["error"][-3000:], "```", ""]
        runs = sc["runs"]
        if runs:
            cols = _columns(runs)
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            for r in runs:
                lines.append("| " + " | ".join(_cell(_get(r, c)) for c in cols) + " |")
        samples = {
            f"{code} ({r.get('label')}, c={r.get('concurrency')})": text
            for r in runs
            for code, text in (r.get("error_samples") or {}).items()
        }
        for what, text in samples.items():
            lines.append(f"- error sample {what}: {text}")
        for key, value in sc.get("extra", {}).items():
            if key == "phases":
                continue  # in the JSON; the table and the first-20 lines carry the gist
            shown = json.dumps(value) if isinstance(value, list) else _cell(value)
            lines.append(f"- {key}: {shown}")
        lines.append("")
        for note in sc["notes"]:
            lines.append(f"- note: {note}")
    lines.append("")
    return "\n".join(lines)


_PREFERRED = (
    "label",
    "concurrency",
    "requests",
    "ok",
    "errors",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "added_over_direct.p50_ms",
    "added_over_direct.p95_ms",
    "added_over_direct.p99_ms",
    "added_vs_tracing_off.p50_ms",
    "added_vs_tracing_off.p99_ms",
    "router_overhead_ms.p50",
    "router_overhead_ms.p99",
    "server_cpu_ms_per_req",
    "peak_rss_mb",
)


def _columns(runs: list[dict[str, Any]]) -> list[str]:
    present = [c for c in _PREFERRED if any(_get(r, c) is not None for r in runs)]
    extra: list[str] = []
    for r in runs:
        for key, value in r.items():
            if key in present or key in extra or isinstance(value, dict | list):
                continue
            if key in ("elapsed_s", "added_over_echo", "error_samples"):
                continue
            extra.append(key)
    return present + extra


def _get(row: dict[str, Any], col: str) -> Any:
    value: Any = row
    for part in col.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def chart(doc: dict[str, Any], path: Path) -> None:
    """Per scenario: p50/p99 bars and req/s per run."""
    scenarios = [s for s in doc["scenarios"] if any("p50_ms" in r for r in s["runs"])]
    n = max(1, len(scenarios))
    fig, axes = plt.subplots(n, 2, figsize=(14, 3.6 * n), squeeze=False)
    for row, sc in enumerate(scenarios):
        runs = [r for r in sc["runs"] if "p50_ms" in r]
        names = [f"{r.get('label', '?')}\nc={r.get('concurrency', '')}" for r in runs]
        x = range(len(runs))
        ax = axes[row][0]
        p50 = [r.get("p50_ms") or 0.0 for r in runs]
        p99 = [r.get("p99_ms") or 0.0 for r in runs]
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log)")
        ax.set_title(f"{sc['name']}: latency")
        ax.set_xticks(list(x), names, fontsize=7, rotation=0)
        ax.legend(fontsize=8)
        ax2 = axes[row][1]
        ax2.bar(list(x), [r.get("rps") or 0.0 for r in runs], color="tab:green")
        ax2.set_ylabel("req/s")
        ax2.set_title(f"{sc['name']}: throughput")
        ax2.set_xticks(list(x), names, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(doc: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Writes the three files; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md, png = (out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png"))
    js.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    md.write_text(markdown(doc))
    chart(doc, png)
    return [js, md, png]
