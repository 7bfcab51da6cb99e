"""Scenario placeholder: failover."""

from __future__ import annotations

from bench.context import Ctx, Result


async def run(ctx: Ctx) -> Result:
    """Not built yet."""
    return Result("failover", "not built yet")
