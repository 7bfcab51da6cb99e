"""What every scenario gets: run size (full or smoke), scratch and log folders, result helpers."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Ctx:
    """One bench invocation."""

    smoke: bool
    """Tiny numbers, seconds in total; targets are reported but never asserted."""
    work: Path
    """Scratch folder (databases, logs); removed at the end unless kept."""
    admin_token: str = "bench-admin-token"
    """Admin token every Quota process is started with."""

    @property
    def logs(self) -> Path:
        """Service logs of this run."""
        return self.work / "logs"

    def n(self, full: int, smoke: int) -> int:
        """A request count for this kind of run."""
        return smoke if self.smoke else full

    def data_dir(self, name: str) -> Path:
        """A fresh data folder for one stack."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))


def has_module(name: str) -> bool:
    """Whether a service or library module exists in this tree yet."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@dataclass
class Target:
    """One target from issue 7 and what this run measured against it."""

    name: str
    """What is measured."""
    goal: str
    """The target, as written in the issue."""
    measured: str
    """What this run measured, with units."""
    met: bool | None
    """True / False; None when the scenario could not measure it."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met}


@dataclass
class Result:
    """What one scenario returns."""

    name: str
    """Scenario title."""
    path: str
    """Which processes and backends were measured, in words."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    """RunStats summaries plus scenario-specific fields."""
    targets: list[Target] = field(default_factory=list)
    """Targets judged by this scenario."""
    notes: list[str] = field(default_factory=list)
    """Anything a reader must know (fallbacks used, pieces missing)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific figures (RSS, failover timelines)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "path": self.path,
            "runs": self.runs,
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            "extra": self.extra,
        }


def new_ctx(smoke: bool) -> Ctx:
    """A context with a fresh scratch folder."""
    return Ctx(smoke=smoke, work=Path(tempfile.mkdtemp(prefix="imagegate-bench-")))


def cleanup(ctx: Ctx) -> None:
    """Removes the scratch folder."""
    shutil.rmtree(ctx.work, ignore_errors=True)
