"""Prompt enhancement: the step between reservation and execution that rewrites the prompt.

It may never cost the image its deadline: it gets a bounded share of what is left, and any
failure (not configured, down, slow, error) sends the original prompt on with a notice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from opentelemetry import trace

from imagegate.common.v1 import image_pb2
from imagegate.enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2
from imagegate.router.v1 import router_pb2
from services.router.adapters import AdapterPool
from services.router.admission import Admitted
from services.router.catalog import Catalog
from services.router.config import RouterSettings
from services.router.planning import RoutePlan
from services.router.prices import PriceMirror

log = logging.getLogger("services.router")
_FORMATS: dict[str, enhancer_pb2.PromptFormat.ValueType] = {
    "natural": enhancer_pb2.PROMPT_FORMAT_NATURAL_LANGUAGE,
    "tags": enhancer_pb2.PROMPT_FORMAT_TAGS,
}


@dataclass
class Enhancement:
    """What the step did for one request."""

    report: router_pb2.PromptEnhancement | None = None
    """What the caller is told; None when enhancement was not asked for."""
    line: metering_pb2.BilledAttempt | None = None
    """The ledger line of the tokens spent (attempt_number set at settlement); None if none."""
    cost_micros: int = 0
    """What the tokens cost, in micro-USD."""

    @property
    def notice(self) -> str:
        """A line for GenerateImageResponse.notices when the original prompt went through."""
        if self.report is None or self.report.status == router_pb2.ENHANCEMENT_STATUS_APPLIED:
            return ""
        return f"prompt enhancement skipped ({self.report.detail}); the original prompt was sent"


def wanted(admitted: Admitted, catalog: Catalog) -> tuple[bool, bool]:
    """(enhance?, did the caller ask explicitly?) from the request field or the style default."""
    req = admitted.norm.request
    if req.HasField("enhance_prompt"):
        return req.enhance_prompt, True
    style = catalog.styles.get(req.style) if req.style else None
    return (style.enhance_by_default if style is not None else False), False


class PromptEnhancementStep:
    """Calls the EnhancerService (when one is configured) within its share of the deadline."""

    def __init__(
        self,
        *,
        stub: enhancer_pb2_grpc.EnhancerServiceStub | None,
        settings: RouterSettings,
        catalog: Catalog,
        adapters: AdapterPool,
        pricer: PriceMirror,
        tracer: trace.Tracer,
    ) -> None:
        self.stub, self.settings, self.catalog = stub, settings, catalog
        self.adapters, self.pricer, self.tracer = adapters, pricer, tracer

    def budget(self, remaining: float) -> float:
        """Seconds the enhancer may take out of `remaining`: a share, capped."""
        share = remaining * self.settings.enhance_deadline_share
        return max(0.0, min(share, self.settings.enhance_max_seconds))

    async def run(self, admitted: Admitted, plan: RoutePlan) -> Enhancement:
        """Rewrites admitted.norm.template's prompt in place when asked and possible."""
        enhance, explicit = wanted(admitted, self.catalog)
        if not enhance:
            return Enhancement()
        template = admitted.norm.template
        report = router_pb2.PromptEnhancement(original_prompt=template.prompt)
        if self.stub is None:
            if not explicit:
                # A style default on a deployment without an enhancer: nothing to report.
                return Enhancement()
            return self._skipped(
                report, router_pb2.ENHANCEMENT_STATUS_NOT_CONFIGURED, "no enhancer"
            )
        budget = self.budget(admitted.deadline.remaining())
        if budget < self.settings.enhance_min_seconds:
            return self._skipped(
                report, router_pb2.ENHANCEMENT_STATUS_TIMED_OUT, "too little time left"
            )
        request = self._request(admitted, plan)
        started = time.perf_counter()
        with self.tracer.start_as_current_span("router.enhance_prompt") as span:
            span.set_attribute("imagegate.enhance.budget_seconds", budget)
            try:
                resp = await self.stub.EnhancePrompt(request, timeout=budget)
            except grpc.aio.AioRpcError as err:
                status, detail = self._failure(err)
                if status == router_pb2.ENHANCEMENT_STATUS_NOT_CONFIGURED and not explicit:
                    # As without an enhancer: a style default that cannot apply is not news.
                    return Enhancement()
                span.set_attribute(
                    "imagegate.enhance.status", router_pb2.EnhancementStatus.Name(status)
                )
                report.latency.CopyFrom(_duration(time.perf_counter() - started))
                return self._skipped(report, status, detail)
            if not resp.prompt.strip():
                report.latency.CopyFrom(_duration(time.perf_counter() - started))
                return self._skipped(
                    report, router_pb2.ENHANCEMENT_STATUS_UNAVAILABLE, "the enhancer sent no prompt"
                )
            span.set_attribute("imagegate.enhance.provider", resp.provider)
            span.set_attribute("imagegate.enhance.cached", resp.cached)
        template.prompt = resp.prompt
        template.negative_prompt = resp.negative_prompt
        report.status = router_pb2.ENHANCEMENT_STATUS_APPLIED
        report.provider, report.provider_model = resp.provider, resp.provider_model
        report.usage.CopyFrom(resp.usage)
        report.cached = resp.cached
        report.latency.CopyFrom(_duration(time.perf_counter() - started))
        out = Enhancement(report=report)
        spent = resp.usage.input_tokens or resp.usage.output_tokens
        if spent and not resp.cached:
            price = self.pricer.find(resp.provider, resp.provider_model)
            cost = self.pricer.usage_cost(resp.provider, resp.provider_model, resp.usage)
            if price is not None and cost is not None:
                out.cost_micros = report.cost_micros = cost
                report.cost_nanos = round(
                    1000
                    * (
                        price.unit_price_micros * resp.usage.output_tokens
                        + price.input_token_price_micros * resp.usage.input_tokens
                    )
                )
                out.line = metering_pb2.BilledAttempt(
                    provider=resp.provider,
                    provider_model=resp.provider_model,
                    usage=image_pb2.Usage(
                        input_tokens=resp.usage.input_tokens,
                        output_tokens=resp.usage.output_tokens,
                    ),
                    succeeded=False,
                    note="prompt enhancement",
                    usage_reported=True,
                    kind=metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT,
                )
            else:
                log.warning(
                    "enhancement not billed: no price for its model",
                    extra={"provider": resp.provider, "provider_model": resp.provider_model},
                )
        return out

    def _request(self, admitted: Admitted, plan: RoutePlan) -> enhancer_pb2.EnhancePromptRequest:
        norm = admitted.norm
        req = norm.request
        style = self.catalog.styles.get(req.style) if req.style else None
        first = plan.candidates[0] if plan.candidates else None
        alias = first.alias if first is not None else (norm.aliases[0] if norm.aliases else "")
        entry = self.catalog.models.get(alias)
        negative = True
        if first is not None:
            info = self.adapters.get(first.provider)
            model = info.models.get(first.provider_model) if info is not None else None
            if model is not None:
                negative = model.capabilities.negative_prompt
        return enhancer_pb2.EnhancePromptRequest(
            prompt=req.prompt,
            style=style.name if style is not None else "",
            style_description=style.description if style is not None else "",
            style_keywords=style.expand("").strip(" ,") if style is not None else "",
            image_model=alias,
            prompt_format=_FORMATS.get(
                entry.prompt_format if entry else "natural",
                enhancer_pb2.PROMPT_FORMAT_NATURAL_LANGUAGE,
            ),
            negative_prompt_supported=negative,
            negative_prompt=norm.template.negative_prompt,
            max_prompt_chars=self.settings.enhance_max_prompt_chars,
        )

    @staticmethod
    def _failure(err: grpc.aio.AioRpcError) -> tuple[router_pb2.EnhancementStatus.ValueType, str]:
        parsed = parse_rpc_error(err)
        if parsed.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return router_pb2.ENHANCEMENT_STATUS_TIMED_OUT, "the enhancer ran out of its time share"
        if parsed.reason == reasons.ENHANCER_NOT_CONFIGURED:
            return router_pb2.ENHANCEMENT_STATUS_NOT_CONFIGURED, "no text provider is configured"
        reason = parsed.reason or parsed.code.name
        return router_pb2.ENHANCEMENT_STATUS_UNAVAILABLE, f"enhancer unavailable: {reason}"

    @staticmethod
    def _skipped(
        report: router_pb2.PromptEnhancement,
        status: router_pb2.EnhancementStatus.ValueType,
        detail: str,
    ) -> Enhancement:
        report.status = status
        report.detail = detail
        return Enhancement(report=report)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return d
