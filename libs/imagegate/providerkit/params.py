"""Parameter ranges a model accepts: clamp and report a Deviation, or refuse."""

from __future__ import annotations

from collections.abc import Mapping
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


def steps_and_guidance(
    request: GenerationRequest,
    steps: Mapping[str, tuple[int, int]],
    guidance: Mapping[str, tuple[float, float]],
) -> tuple[int | None, float | None, list[Deviation]]:
    """The request's steps and guidance scale `bounded` by its model's ranges, and any clamping.

    Each is None when the caller set none or the model has no range for it (nothing to send).
    """
    deviations: list[Deviation] = []
    step_count = scale = None
    if request.steps is not None and request.model in steps:
        lo, hi = steps[request.model]
        step_count, dev = bounded("steps", request.steps, lo, hi, request=request)
        deviations += [dev] if dev else []
    if request.guidance_scale is not None and request.model in guidance:
        glo, ghi = guidance[request.model]
        scale, dev = bounded("guidance_scale", request.guidance_scale, glo, ghi, request=request)
        deviations += [dev] if dev else []
    return step_count, scale, deviations
