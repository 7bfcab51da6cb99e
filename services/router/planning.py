"""Planning: the candidates for a request after every filter that holds nothing yet.

Static filters (enabled, provider lists, capabilities) need no tenant; tenant filters (plan tier,
cost ceiling) need the caller. Both run before any quota is reserved, so a refused request never
touches Quota. Breakers and the deadline are applied later, per attempt, by execution.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.inputs.checks import EditMode
from imagegate.pricing import prompt_token_bound
from imagegate.router.v1 import router_pb2
from services.router.adapters import AdapterPool
from services.router.admission import Caller
from services.router.catalog import Candidate, Catalog
from services.router.prices import PriceMirror
from services.router.validation import Normalized, capability_gaps

DOMAIN = "imagegate.router"


@dataclass
class Skip:
    """A candidate not tried, and why."""

    candidate: Candidate
    kind: str
    text: str
    retry_at: float | None = None


@dataclass
class RoutePlan:
    """Candidates that survived the filters so far."""

    candidates: list[Candidate]
    skipped: list[Skip] = field(default_factory=list)
    local_substitute: bool = False
    notices: list[str] = field(default_factory=list)


class Planner:
    """Builds a request's RoutePlan from the catalog, the adapters' descriptions and prices."""

    def __init__(
        self,
        catalog: Catalog,
        adapters: AdapterPool,
        pricer: PriceMirror,
        clock: Callable[[], float],
    ) -> None:
        self.catalog = catalog
        self.adapters = adapters
        self.pricer = pricer
        self.clock = clock

    def plan(self, norm: Normalized, caller: Caller) -> RoutePlan:
        """Every filter that needs no provider call; raises when nothing is left."""
        plan = self.static_plan(norm)
        if not plan.candidates:
            raise self.no_candidate(plan, norm)
        self.tenant_filters(plan, norm, caller)
        if not plan.candidates:
            raise self.no_candidate(plan, norm)
        return plan

    def hold_micros(self, plan: RoutePlan, norm: Normalized) -> int:
        """What to reserve: the dearest candidate's quote, capped by the caller's ceiling."""
        quotes = [self.quote(c, norm) for c in plan.candidates]
        cost = max((q for q in quotes if q is not None), default=0)
        if norm.request.max_cost_micros > 0:
            cost = min(cost, norm.request.max_cost_micros)
        return cost

    def static_plan(self, norm: Normalized) -> RoutePlan:
        """Candidates after the filters that need no tenant: enabled, lists, capabilities."""
        req = norm.request
        allowed, blocked = set(req.allowed_providers), set(req.blocked_providers)
        plan = RoutePlan(candidates=[])
        local = self.catalog.local_provider
        requested: list[Candidate] = []
        for alias in norm.aliases:
            requested.extend(self.catalog.models[alias].candidates)
        if not self.adapters.hosted_enabled() and not all(c.provider == local for c in requested):
            alias = norm.explicit_model or "local"
            tier = (
                self.catalog.models[norm.explicit_model].tier if norm.explicit_model else "budget"
            )
            requested = [self.catalog.local_candidate(alias, tier)]
            plan.local_substitute = True
            plan.notices.append(
                "no hosted provider is enabled: the local backend (procedural images) served "
                f"this request in place of {'/'.join(norm.aliases) or 'the requested models'}"
            )
        seen: set[tuple[str, str]] = set()
        for cand in requested:
            if (cand.provider, cand.provider_model) in seen:
                continue
            seen.add((cand.provider, cand.provider_model))
            adapter = self.adapters.get(cand.provider)
            if adapter is None or not adapter.described:
                plan.skipped.append(Skip(cand, "disabled", "adapter not configured or unreachable"))
                continue
            if not adapter.enabled:
                plan.skipped.append(Skip(cand, "disabled", "provider not enabled (no credentials)"))
                continue
            if allowed and cand.provider not in allowed:
                plan.skipped.append(Skip(cand, "provider_filter", "not in allowed_providers"))
                continue
            if cand.provider in blocked:
                plan.skipped.append(Skip(cand, "provider_filter", "in blocked_providers"))
                continue
            model = adapter.models.get(cand.provider_model)
            if model is None:
                plan.skipped.append(Skip(cand, "capability", "adapter does not serve this model"))
                continue
            gaps, hard = capability_gaps(
                model.capabilities, norm.template, caller_negative=norm.caller_negative
            )
            if gaps and (hard or not req.allow_degradation):
                plan.skipped.append(Skip(cand, "capability", "; ".join(gaps)))
                continue
            plan.candidates.append(cand)
        if req.preference == router_pb2.PREFERENCE_BUDGET and not norm.explicit_model:
            quotes = {c: self.quote(c, norm) for c in plan.candidates}
            unknown = 1 << 62
            own = self.catalog.self_hosted_providers
            # Self-hosted first, then cheapest: own capacity is used before anything is bought.
            plan.candidates.sort(
                key=lambda c: (
                    c.provider not in own,
                    q if (q := quotes[c]) is not None else unknown,
                )
            )
        return plan

    def quote(self, cand: Candidate, norm: Normalized) -> int | None:
        """Expected price of a candidate in micro-USD (None when Metering has no price)."""
        if cand.local:
            return 0
        t = norm.template
        return self.pricer.quote(
            cand.provider,
            cand.provider_model,
            width=t.width,
            height=t.height,
            num_images=t.num_images,
            steps=t.steps if t.HasField("steps") else None,
            quality=t.quality,
            input_tokens=prompt_token_bound(t.prompt),
        )

    def tenant_filters(self, plan: RoutePlan, norm: Normalized, caller: Caller) -> None:
        """Removes candidates the plan forbids or that cost more than the ceiling."""
        tiers = set(caller.plan.allowed_tiers)
        # An alias the plan excludes is refused whoever would serve it, the local stand-in
        # included: the plan rule is the same with and without provider keys.
        if norm.explicit_model and tiers:
            tier = self.catalog.models[norm.explicit_model].tier
            if tier not in tiers:
                raise ImagegateError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    reasons.PLAN_FORBIDS_MODEL,
                    f"plan {caller.plan.id!r} allows tiers {', '.join(sorted(tiers))}; model "
                    f"{norm.explicit_model!r} is {tier}",
                    domain=DOMAIN,
                    metadata={
                        "plan": caller.plan.id,
                        "model": norm.explicit_model,
                        "tier": tier,
                        "allowed_tiers": ",".join(sorted(tiers)),
                    },
                )
        kept: list[Candidate] = []
        for cand in plan.candidates:
            tier = "budget" if cand.provider == self.catalog.local_provider else cand.tier
            if tiers and tier not in tiers:
                plan.skipped.append(
                    Skip(cand, "plan", f"plan {caller.plan.id} excludes tier {tier}")
                )
            else:
                kept.append(cand)
        if plan.candidates and not kept and not norm.explicit_model:
            kept = self._plan_fallback(plan, norm, tiers, caller.plan.id)
        if plan.candidates and not kept:
            raise ImagegateError(
                grpc.StatusCode.PERMISSION_DENIED,
                reasons.PLAN_FORBIDS_MODEL,
                f"plan {caller.plan.id!r} allows tiers {', '.join(sorted(tiers))}; no enabled "
                "candidate for this request is in them (try preference BUDGET)",
                domain=DOMAIN,
                metadata={"plan": caller.plan.id, "allowed_tiers": ",".join(sorted(tiers))},
            )
        plan.candidates = kept
        ceiling = norm.request.max_cost_micros
        if ceiling <= 0:
            return
        priced: list[tuple[Candidate, int | None]] = [(c, self.quote(c, norm)) for c in kept]
        within = [c for c, q in priced if q is not None and q <= ceiling]
        for c, q in priced:
            if c not in within:
                text = "price unknown" if q is None else f"costs {q} micro-USD > {ceiling}"
                plan.skipped.append(Skip(c, "cost", text))
        if priced and not within:
            known = [(q, c) for c, q in priced if q is not None]
            cheapest = min(known, key=lambda qc: qc[0]) if known else None
            meta = {"max_cost_micros": str(ceiling)}
            msg = f"no candidate costs at most {ceiling} micro-USD"
            if cheapest is not None:
                q, c = cheapest
                meta.update(
                    cheapest_provider=c.provider,
                    cheapest_model=c.alias,
                    cheapest_provider_model=c.provider_model,
                    cheapest_cost_micros=str(q),
                )
                msg += f"; the cheapest option is {c.alias} on {c.key} at {q} micro-USD"
            raise ImagegateError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.COST_CEILING_UNMET,
                msg,
                domain=DOMAIN,
                metadata=meta,
            )
        plan.candidates = within

    def _plan_fallback(
        self, plan: RoutePlan, norm: Normalized, tiers: set[str], plan_id: str
    ) -> list[Candidate]:
        """Candidates of the models the plan allows, when the preference named none of them.

        A preference is a wish, not a requirement: a free tenant asking for BALANCED gets the
        budget models (in BUDGET order) rather than an error. An explicit model stays strict.
        """
        editing = norm.edit.mode is not EditMode.TEXT
        order = list(self.catalog.aliases_for(router_pb2.PREFERENCE_BUDGET, edit=editing))
        order += [a for a in self.catalog.models if a not in order]
        # The local renderer draws placeholders: it is never a stand-in for a hosted model.
        local = self.catalog.local_alias
        aliases = tuple(
            a
            for a in order
            if a not in norm.aliases and a != local and self.catalog.models[a].tier in tiers
        )
        if not aliases:
            return []
        extra = self.static_plan(dataclasses.replace(norm, aliases=aliases))
        kept = [
            c
            for c in extra.candidates
            if c.tier in tiers and c.provider != self.catalog.local_provider
        ]
        if kept:
            wanted = router_pb2.Preference.Name(
                norm.request.preference or router_pb2.PREFERENCE_BALANCED
            )
            models = ", ".join(dict.fromkeys(c.alias for c in kept))
            plan.notices.append(
                f"plan {plan_id} allows tiers {', '.join(sorted(tiers))}: "
                f"{wanted.removeprefix('PREFERENCE_').lower()} models are outside it, so the "
                f"plan's models were tried instead, in this order: {models}"
            )
        return kept

    def no_candidate(self, plan: RoutePlan, norm: Normalized) -> ImagegateError:
        """The error when no candidate is left, naming why each was dropped."""
        # Candidates filtered out statically (not enabled, lists, capabilities) do not explain
        # why the ones that passed were not called; breakers and the deadline do.
        dynamic = {s.kind for s in plan.skipped if s.kind in ("breaker", "deadline")}
        kinds = dynamic or {s.kind for s in plan.skipped}
        detail = "; ".join(f"{s.candidate.key}: {s.text}" for s in plan.skipped[:12])
        meta = {"skipped": json.dumps([[s.candidate.key, s.kind] for s in plan.skipped])[:2000]}
        if kinds == {"deadline"}:
            return ImagegateError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                reasons.DEADLINE_TOO_SHORT,
                "the request's deadline is too short for any candidate to answer (set a longer "
                f"deadline): {detail}",
                domain=DOMAIN,
                metadata=meta,
            )
        if dynamic:
            retry = [s.retry_at for s in plan.skipped if s.retry_at is not None]
            wait = max(0.0, min(retry) - self.clock()) if retry else 1.0
            return ImagegateError(
                grpc.StatusCode.UNAVAILABLE,
                reasons.NO_CANDIDATE,
                f"every candidate is unhealthy (circuit open): {detail}",
                domain=DOMAIN,
                metadata=meta,
                retry_after_seconds=wait,
            )
        models = "/".join(norm.aliases) or "(none)"
        return ImagegateError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reasons.NO_CANDIDATE,
            f"no enabled provider can serve {models} for this request: {detail or 'none configured'}",
            domain=DOMAIN,
            metadata=meta,
        )
