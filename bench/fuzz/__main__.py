"""`python -m bench.fuzz [--seconds N] [--only T,...]` (make fuzz): run every fuzz target, report.

Each target runs hypothesis in rounds until its share of the time is spent. Failures print the
shrunk example and land in bench/fuzz/corpus (hypothesis's example database, replayed first on
the next run); fixed ones become regression tests in tests/security/test_fuzz_regressions.py.
A summary (examples run, outcomes reached, failures) goes to bench/results/fuzz-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from bench.fuzz import adapter_responses, router_validation

CORPUS = Path(__file__).with_name("corpus")
RESULTS = Path(__file__).parents[1] / "results"


def targets() -> dict[str, tuple[Callable[..., str], list[st.SearchStrategy[Any]]]]:
    """Name -> (property, strategies of its arguments)."""
    out: dict[str, tuple[Callable[..., str], list[st.SearchStrategy[Any]]]] = {
        "router-request": (router_validation.check_request, [router_validation.requests()]),
        "router-wire": (router_validation.check_wire, [st.binary(max_size=512)]),
    }
    for name in adapter_responses.ADAPTERS:

        def prop(pair: Any, _name: str = name) -> str:
            return adapter_responses.check_adapter(_name, *pair)

        out[f"adapter-{name}"] = (prop, [adapter_responses.scripts(name)])
    return out


def run_target(
    name: str, prop: Callable[..., str], strategies: list[Any], seconds: float
) -> dict[str, Any]:
    """Rounds of hypothesis until `seconds` pass or a failure is found."""
    outcomes: collections.Counter[str] = collections.Counter()
    database = DirectoryBasedExampleDatabase(str(CORPUS / name))

    @settings(
        max_examples=200,
        deadline=None,
        database=database,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.tuples(*strategies))
    def test(args: tuple[Any, ...]) -> None:
        outcomes[prop(*args)] += 1

    end = time.monotonic() + seconds
    rounds, failure = 0, ""
    while time.monotonic() < end:
        rounds += 1
        try:
            test()
        except Exception as err:
            failure = f"{type(err).__name__}: {str(err)[:500]}"
            # Hypothesis attaches the shrunk falsifying example as notes.
            for note in getattr(err, "__notes__", []):
                print(f"[{name}] {note}", flush=True)
            break
    return {
        "target": name,
        "rounds": rounds,
        "examples": sum(outcomes.values()),
        "outcomes": dict(outcomes.most_common()),
        "failure": failure,
    }


def main() -> None:
    """Runs the targets and writes the summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="total time, split evenly")
    parser.add_argument("--only", default="", help="comma-separated target names")
    args = parser.parse_args()
    chosen = targets()
    if args.only:
        wanted = {t.strip() for t in args.only.split(",")}
        chosen = {k: v for k, v in chosen.items() if k in wanted}
    share = args.seconds / max(len(chosen), 1)
    summary = []
    for name, (prop, strategies) in chosen.items():
        result = run_target(name, prop, strategies, share)
        summary.append(result)
        status = "FAILED " + result["failure"] if result["failure"] else "ok"
        print(f"{name:22} {result['examples']:7} examples  {status}", flush=True)
        print(f"{'':22} outcomes: {result['outcomes']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"fuzz-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps({"seconds": args.seconds, "targets": summary}, indent=2) + "\n")
    print(f"summary: {out}")
    sys.exit(1 if any(r["failure"] for r in summary) else 0)


if __name__ == "__main__":
    main()
