"""The open models a self-hosted pipeline can be, with what each honours and its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from imagegate.providerkit.types import ModelSpec, PriceUnit, SizeRule


@dataclass(frozen=True)
class Profile:
    """One open model: its capabilities and the parameters used when a caller sets none."""

    spec: ModelSpec
    """Capabilities; price unit is compute seconds."""
    default_steps: int
    """Denoising steps when the caller sets none."""
    steps_range: tuple[int, int]
    """Inclusive steps accepted."""
    default_guidance: float
    """Guidance scale when the caller sets none."""
    guidance_range: tuple[float, float]
    """Inclusive guidance scale accepted."""


def _profile(
    model_id: str,
    sizes: SizeRule,
    *,
    negative: bool,
    steps: tuple[int, int, int],
    guidance: tuple[float, float, float],
) -> Profile:
    return Profile(
        spec=ModelSpec(
            id=model_id,
            sizes=sizes,
            max_images=4,
            seed=True,
            negative_prompt=negative,
            steps=True,
            guidance=True,
            price_unit=PriceUnit.COMPUTE_SECOND,
        ),
        default_steps=steps[0],
        steps_range=(steps[1], steps[2]),
        default_guidance=guidance[0],
        guidance_range=(guidance[1], guidance[2]),
    )


# Latents are 1/8 of the image side (SD, SDXL) and FLUX packs 2x2 latents, hence 8 and 16.
PROFILES: dict[str, Profile] = {
    p.spec.id: p
    for p in (
        _profile(
            "stabilityai/stable-diffusion-2-1",
            SizeRule(min_side=64, max_side=1536, multiple=8, max_pixels=1536 * 1536),
            negative=True,
            steps=(25, 1, 150),
            guidance=(7.5, 0.0, 20.0),
        ),
        _profile(
            "stabilityai/stable-diffusion-xl-base-1.0",
            SizeRule(min_side=64, max_side=2048, multiple=8, max_pixels=2048 * 2048),
            negative=True,
            steps=(30, 1, 150),
            guidance=(5.0, 0.0, 20.0),
        ),
        _profile(
            "black-forest-labs/FLUX.1-schnell",
            SizeRule(min_side=64, max_side=2048, multiple=16, max_pixels=2048 * 2048),
            negative=False,
            steps=(4, 1, 12),
            guidance=(0.0, 0.0, 20.0),
        ),
    )
}
