"""The Router's metrics instruments and its JSON log lines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from imagegate.inputs.checks import EditMode, edit_mode
from imagegate.router.v1 import router_pb2
from imagegate.telemetry.redact import redact
from services.router.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from services.router.config import RouterSettings

log = logging.getLogger("services.router")


class InFlight:
    """Requests being served: a plain count, observed at collection time."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, delta: int) -> None:
        """Counts `delta` requests in (1) or out (-1)."""
        self.value += delta

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The observable counter's callback."""
        yield Observation(self.value)


@dataclass
class RequestSummary:
    """What one GenerateImage request did, for its metrics and its log line."""

    trace_id: str = ""
    request_id: str = ""
    tenant_id: str = ""
    outcome: str = "error"
    provider: str = ""
    model: str = ""
    cost_micros: int = 0
    attempts: int = 0
    adapter_seconds: float = 0.0


class RouterMetrics:
    """Every instrument the Router records, created once per process."""

    def __init__(self, meter: metrics.Meter, breakers: Callable[[], BreakerRegistry]) -> None:
        self._breakers = breakers
        self.requests = meter.create_counter(
            "imagegate.router.requests", unit="{request}", description="Requests by outcome."
        )
        self.duration = meter.create_histogram(
            "imagegate.router.request.duration", unit="s", description="End-to-end request time."
        )
        self.attempt_duration = meter.create_histogram(
            "imagegate.router.attempt.duration", unit="s", description="Time of each adapter call."
        )
        self.overhead = meter.create_histogram(
            "imagegate.router.overhead",
            unit="s",
            description="End-to-end time minus adapter time: what the gateway adds.",
        )
        self.transitions = meter.create_counter(
            "imagegate.router.breaker.transitions", unit="{transition}"
        )
        self.cost = meter.create_counter(
            "imagegate.router.cost", unit="{micro-USD}", description="Cost of served requests."
        )
        # Read when metrics are collected, not recorded twice per request.
        self.in_flight = InFlight()
        meter.create_observable_up_down_counter(
            "imagegate.router.in_flight",
            callbacks=[self.in_flight.observe],
            unit="{request}",
            description="Requests being served.",
        )
        meter.create_observable_gauge(
            "imagegate.router.breaker.state",
            callbacks=[self._observe_breakers],
            description="0 closed, 1 half-open, 2 open.",
        )

    def finish_request(self, summary: RequestSummary, elapsed: float) -> float:
        """Records a finished request's metrics and log line; returns the Router's overhead."""
        overhead = max(0.0, elapsed - summary.adapter_seconds)
        labels = {"model": summary.model, "provider": summary.provider, "outcome": summary.outcome}
        self.requests.add(1, labels)
        self.duration.record(elapsed, labels)
        self.overhead.record(overhead, {"outcome": summary.outcome})
        self.in_flight.add(-1)
        log.info(
            "request finished",
            extra={
                "event": "request",
                "tenant_id": summary.tenant_id,
                "request_id": summary.request_id,
                "outcome": summary.outcome,
                "attempts": summary.attempts,
                "provider": summary.provider,
                "model": summary.model,
                "cost_micros": summary.cost_micros,
                "duration_ms": round(elapsed * 1000, 3),
                "overhead_ms": round(overhead * 1000, 3),
            },
        )
        return overhead

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        for (provider, model), breaker in self._breakers().items():
            yield Observation(breaker.state.gauge, {"provider": provider, "provider_model": model})


def breaker_transition_handler(
    metrics_: Callable[[], RouterMetrics | None],
) -> Callable[[CircuitBreaker, BreakerState, BreakerState, str], None]:
    """A listener that counts, traces and logs every breaker transition."""

    def on_transition(
        breaker: CircuitBreaker, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        attrs = {"breaker": breaker.name, "from": old.value, "to": new.value, "reason": reason}
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("breaker_transition", attrs)
        m = metrics_()
        if m is not None:
            m.transitions.add(1, {"breaker": breaker.name, "to": new.value})
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        log.log(level, "breaker transition", extra={"event": "breaker_transition", **attrs})

    return on_transition


def span_request(
    span: trace.Span, request: router_pb2.GenerateImageRequest, settings: RouterSettings
) -> None:
    """Puts what the caller asked for on the request's span."""
    span.set_attribute("imagegate.preference", router_pb2.Preference.Name(request.preference))
    span.set_attribute("imagegate.model", request.model or "")
    # The mode and input sizes only: input image bytes never go on a span.
    mode = edit_mode(
        image=request.image,
        mask=request.mask,
        mask_from_alpha=request.mask_from_alpha,
        references=len(request.reference_images),
    )
    span.set_attribute("imagegate.edit_mode", mode.value)
    if mode is not EditMode.TEXT:
        inputs = [request.image, request.mask, *request.reference_images]
        span.set_attribute("imagegate.input_image_bytes", sum(len(b) for b in inputs))
    if settings.record_prompts:
        # Redacted as well as truncated: prompts sometimes carry pasted credentials.
        chars = settings.prompt_record_chars
        span.set_attribute("imagegate.prompt", redact(request.prompt[:chars]))


def span_result(
    span: trace.Span, response: router_pb2.GenerateImageResponse, metrics: RouterMetrics
) -> None:
    """Puts who served the request and what it cost on its span and the cost counter."""
    span.set_attribute("imagegate.provider", response.provider)
    span.set_attribute("imagegate.model", response.model)
    span.set_attribute("imagegate.cost_micros", response.cost_micros)
    span.set_attribute("imagegate.images", response.usage.images)
    span.set_attribute("imagegate.megapixels", response.usage.megapixels)
    metrics.cost.add(response.cost_micros, {"provider": response.provider, "model": response.model})
