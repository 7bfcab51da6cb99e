"""The data one GenerateImage request carries between the pipeline's stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import trace

from imagegate.common.v1 import image_pb2
from imagegate.quota.v1 import quota_pb2
from imagegate.router.v1 import router_pb2
from services.router.admission import Admitted
from services.router.catalog import Candidate
from services.router.enhancement import Enhancement
from services.router.events import EventSink
from services.router.planning import RoutePlan


@dataclass
class AttemptLog:
    """What the attempts of one request did, in order (settlement bills from it)."""

    attempts: list[router_pb2.Attempt] = field(default_factory=list)
    """Every attempt, as the caller sees it."""
    billable_failures: list[tuple[Candidate, router_pb2.Attempt, image_pb2.Usage | None]] = field(
        default_factory=list
    )
    """Failed attempts the provider may bill, with the usage the adapter reported (None: none
    reported, e.g. the Router's own timeout or a cancelled hedge loser)."""
    adapter_seconds: float = 0.0
    """Wall time with at least one attempt running, its concurrency-gate wait included (the
    rest of the request's time is the Router's own overhead)."""
    retry_at: dict[str, float] = field(default_factory=dict)
    """Candidate key -> clock time its provider said to come back (429 Retry-After)."""
    started: int = 0
    """Attempts started so far (attempt numbers follow start order, hedges included)."""

    def next_number(self) -> int:
        """The number of the attempt about to start."""
        self.started += 1
        return self.started


@dataclass
class Job:
    """An admitted, planned and reserved request on its way through execution and settlement."""

    admitted: Admitted
    """The validated request and its caller."""
    plan: RoutePlan
    """Candidates in order, what was skipped, and notices for the caller."""
    reservation: quota_pb2.Reservation | None
    """The quota hold, or None when serving fail-open without Quota."""
    trace_id: str
    """The request's trace id (hex)."""
    span: trace.Span
    """The request's span."""
    events: EventSink | None = None
    """Where stream events go (StreamGenerateImage only)."""
    log: AttemptLog = field(default_factory=AttemptLog)
    """What the attempts did so far."""
    settled: bool = False
    """Whether settlement has been handed its order (it must happen exactly once)."""
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When the Router accepted the request (the usage record's time)."""
    enhancement: Enhancement = field(default_factory=Enhancement)
    """What prompt enhancement did (and what it cost) before the attempts."""
