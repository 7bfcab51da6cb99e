"""FLUX Kontext's aspect ratios and the about-one-megapixel size each gives, shared by every host.

fal, Replicate and Together take Kontext's size as an `aspect_ratio`; the sizes are diffusers'
FLUX Kontext resolutions, unconfirmed for each host ([U]; docs/edits.md).
"""

from __future__ import annotations

# aspect ratio -> (width, height)
KONTEXT_SIZES: dict[str, tuple[int, int]] = {
    "21:9": (1568, 672),
    "16:9": (1392, 752),
    "4:3": (1184, 880),
    "3:2": (1248, 832),
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:4": (880, 1184),
    "9:16": (752, 1392),
    "9:21": (672, 1568),
}
# (width, height) -> aspect ratio: what an adapter sends for a size the servicer allowed.
KONTEXT_RATIOS: dict[tuple[int, int], str] = {size: ratio for ratio, size in KONTEXT_SIZES.items()}
