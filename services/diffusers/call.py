"""One pipeline call: what the adapter asks the device to run (no torch needed to build it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    """One pipeline call: every image of one request, in one batch."""

    prompt: str
    """Prompt text."""
    negative_prompt: str
    """Negative prompt; empty for none."""
    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""
    num_images: int
    """Images in the batch."""
    seeds: tuple[int, ...]
    """One seed per image (a generator each, so image i is reproducible alone)."""
    steps: int
    """Denoising steps."""
    guidance_scale: float
    """Classifier-free guidance scale."""
