"""Plans loaded from plans.yaml (data, not code)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imagegate.quota.v1 import quota_pb2

TIERS = ("budget", "fast", "standard", "premium")
DEFAULT_PLAN = "free"


def load_plans(path: Path | None = None) -> dict[str, quota_pb2.Plan]:
    """Plans by id, from `path` or the packaged plans.yaml; validates tiers and limits."""
    if path is None:
        text = resources.files("services.quota").joinpath("plans.yaml").read_text()
    else:
        text = path.read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    plans: dict[str, quota_pb2.Plan] = {}
    for entry in data["plans"]:
        plan = quota_pb2.Plan(
            id=str(entry["id"]),
            display_name=str(entry.get("display_name", entry["id"])),
            monthly_images=int(entry.get("monthly_images", 0)),
            monthly_megapixels=float(entry.get("monthly_megapixels", 0)),
            monthly_cost_micros=int(entry.get("monthly_cost_micros", 0)),
            allowed_tiers=[str(t) for t in entry.get("allowed_tiers") or []],
            price_micros=int(entry.get("price_micros", 0)),
        )
        unknown = set(plan.allowed_tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"plan {plan.id}: unknown tiers {sorted(unknown)}")
        if plan.monthly_images < 0 or plan.monthly_megapixels < 0 or plan.monthly_cost_micros < 0:
            raise ValueError(f"plan {plan.id}: limits must be >= 0")
        if plan.id in plans:
            raise ValueError(f"plan {plan.id} defined twice")
        plans[plan.id] = plan
    if DEFAULT_PLAN not in plans:
        raise ValueError(f"the plans must include {DEFAULT_PLAN!r}")
    return plans
