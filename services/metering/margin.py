"""The margin report: a month's revenue, provider cost and gross margin per plan and tenant.

Revenue is the plan's monthly price (the plans catalog Quota enforces) for every tenant with
usage in the month, on the plan of its latest request that month. Provider cost is every
billable attempt, failed ones included, priced as recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Engine, Table, case, func, select

from imagegate.metering.v1 import metering_pb2
from services.metering.models import BilledAttemptRow, UsageRecordRow

_records: Table = cast(Table, UsageRecordRow.__table__)
_attempts: Table = cast(Table, BilledAttemptRow.__table__)
_ENHANCEMENT = metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT


@dataclass
class _Tally:
    """Sums of one line before it becomes a MarginLine."""

    plan: str
    tenant_id: str = ""
    tenants: int = 0
    requests: int = 0
    images: int = 0
    revenue: int = 0
    usage_charge: int = 0
    cost: int = 0
    failed_cost: int = 0
    providers: dict[str, list[int]] = field(default_factory=dict)
    """provider -> [attempts, cost, failed cost]."""

    def add(self, other: _Tally) -> None:
        self.tenants += other.tenants
        self.requests += other.requests
        self.images += other.images
        self.revenue += other.revenue
        self.usage_charge += other.usage_charge
        self.cost += other.cost
        self.failed_cost += other.failed_cost
        for provider, sums in other.providers.items():
            mine = self.providers.setdefault(provider, [0, 0, 0])
            for i, value in enumerate(sums):
                mine[i] += value

    def line(self) -> metering_pb2.MarginLine:
        margin = self.revenue - self.cost
        return metering_pb2.MarginLine(
            plan=self.plan,
            tenant_id=self.tenant_id,
            tenants=self.tenants,
            requests=self.requests,
            images=self.images,
            revenue_micros=self.revenue,
            usage_charge_micros=self.usage_charge,
            provider_cost_micros=self.cost,
            provider_costs=[
                metering_pb2.ProviderCost(
                    provider=p, attempts=s[0], cost_micros=s[1], failed_cost_micros=s[2]
                )
                for p, s in sorted(self.providers.items())
            ],
            failed_attempt_cost_micros=self.failed_cost,
            gross_margin_micros=margin,
            gross_margin_percent=round(100.0 * margin / self.revenue, 2) if self.revenue else 0.0,
        )


def margin_report(
    engine: Engine, period: str, plan_prices: Mapping[str, int]
) -> metering_pb2.MarginReport:
    """The report of `period` from the ledger; `plan_prices` is plan id -> monthly micro-USD."""
    r, a = _records.c, _attempts.c
    with engine.begin() as conn:
        totals = conn.execute(
            select(
                r.tenant_id,
                func.count(),
                func.coalesce(func.sum(r.images), 0),
                func.coalesce(func.sum(r.tenant_charge_micros), 0),
                func.coalesce(func.sum(r.cost_micros), 0),
                func.coalesce(func.sum(r.failed_cost_micros), 0),
            )
            .where(r.period == period)
            .group_by(r.tenant_id)
        ).all()
        plans = conn.execute(
            select(r.tenant_id, r.plan, func.max(r.occurred_us))
            .where(r.period == period)
            .group_by(r.tenant_id, r.plan)
        ).all()
        providers = conn.execute(
            select(
                a.tenant_id,
                a.provider,
                func.count(),
                func.coalesce(func.sum(a.cost_micros), 0),
                func.coalesce(
                    func.sum(
                        case((a.succeeded | (a.kind == _ENHANCEMENT), 0), else_=a.cost_micros)
                    ),
                    0,
                ),
            )
            .where(a.period == period)
            .group_by(a.tenant_id, a.provider)
        ).all()
    latest: dict[str, tuple[int, str]] = {}
    for tenant_id, plan, at in plans:
        if tenant_id not in latest or (at, plan) > latest[tenant_id]:
            latest[tenant_id] = (int(at), str(plan))
    tenants: dict[str, _Tally] = {}
    for tenant_id, requests, images, charge, cost, failed in totals:
        plan = latest[tenant_id][1]
        tenants[tenant_id] = _Tally(
            plan=plan,
            tenant_id=tenant_id,
            tenants=1,
            requests=int(requests),
            images=int(images),
            revenue=int(plan_prices.get(plan, 0)),
            usage_charge=int(charge),
            cost=int(cost),
            failed_cost=int(failed),
        )
    for tenant_id, provider, count, cost, failed in providers:
        if tenant_id in tenants:
            tenants[tenant_id].providers[provider] = [int(count), int(cost), int(failed)]
    by_plan: dict[str, _Tally] = {}
    total = _Tally(plan="")
    for tally in tenants.values():
        by_plan.setdefault(tally.plan, _Tally(plan=tally.plan)).add(tally)
        total.add(tally)
    ordered = sorted(tenants.values(), key=lambda t: (t.plan, t.tenant_id))
    return metering_pb2.MarginReport(
        period=period,
        plans=[by_plan[p].line() for p in sorted(by_plan)],
        tenants=[t.line() for t in ordered],
        total=total.line(),
    )
