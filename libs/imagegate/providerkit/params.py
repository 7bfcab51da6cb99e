"""Parameter ranges a model accepts: clamp and report a Deviation, or refuse."""

from __future__ import annotations

from typing import TypeVar

from imagegate.grpckit import reasons
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import Deviation, GenerationRequest

N = TypeVar("N", int, float)


def bounded(
    name: str, value: N | None, lo: N, hi: N, *, request: GenerationRequest
) -> tuple[N | None, Deviation | None]:
    """`value` when within lo..hi; clamped with a Deviation under allow_degradation; else refused.

    Refusal is PROVIDER_UNSUPPORTED_PARAMETER (INVALID_ARGUMENT): never silently changed.
    """
    if value is None or lo <= value <= hi:
        return value, None
    clamped = min(hi, max(lo, value))
    if not request.allow_degradation:
        raise ProviderError(
            reasons.PROVIDER_UNSUPPORTED_PARAMETER,
            f"{name}={value:g} is outside what {request.model} accepts ({lo:g} to {hi:g})",
            extra={"fields": name},
        )
    return clamped, Deviation(name, f"{value:g}", f"{clamped:g}", f"model accepts {lo:g} to {hi:g}")
