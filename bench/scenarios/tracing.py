"""Scenario placeholder: tracing."""

from __future__ import annotations

from bench.context import Ctx, Result


async def run(ctx: Ctx) -> Result:
    """Not built yet."""
    return Result("tracing", "not built yet")
