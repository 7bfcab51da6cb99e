"""The gateway's input-image limits and the header-only checks every hop runs before a provider call."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, UnidentifiedImageError

from imagegate.grpckit.errors import FieldViolation

MIB = 1024 * 1024
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)


class EditMode(StrEnum):
    """What a request does with its input images (derived from which fields are set)."""

    TEXT = "text_to_image"
    IMAGE_TO_IMAGE = "image_to_image"
    INPAINT = "inpainting"
    REFERENCE = "reference_edit"


def edit_mode(*, image: bytes, mask: bytes, mask_from_alpha: bool, references: int) -> EditMode:
    """The mode a set of input fields asks for: a mask wins, then references, then the image."""
    if mask or mask_from_alpha:
        return EditMode.INPAINT
    if references:
        return EditMode.REFERENCE
    if image:
        return EditMode.IMAGE_TO_IMAGE
    return EditMode.TEXT


@dataclass(frozen=True)
class InputLimits:
    """What the gateway accepts as input images (docs/edits.md states the same figures)."""

    max_bytes: int = 10 * MIB
    """Largest encoded image, mask or reference image."""
    max_side: int = 4096
    """Largest width or height in pixels."""
    min_side: int = 16
    """Smallest width or height in pixels."""
    max_reference_images: int = 4
    """Most reference images in one request."""
    formats: tuple[str, ...] = ("png", "jpeg", "webp")
    """Accepted encodings, detected from the bytes (never from a name or a label)."""


@dataclass(frozen=True)
class InputImage:
    """Facts read from an input image's header (nothing is fully decoded)."""

    format: str
    """"png", "jpeg" or "webp"."""
    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""
    has_alpha: bool
    """Whether the image carries an alpha channel (or PNG transparency)."""
    size_bytes: int
    """Encoded length."""


def sniff(data: bytes) -> str | None:
    """The encoding named by the magic bytes, or None when it is not PNG, JPEG or WebP."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def inspect(
    data: bytes, field: str, limits: InputLimits
) -> tuple[InputImage | None, list[FieldViolation]]:
    """Checks size, encoding and dimensions of one input; the image facts when it passes."""
    if len(data) > limits.max_bytes:
        return None, [
            FieldViolation(
                field,
                f"{len(data)} bytes; at most {limits.max_bytes} bytes "
                f"({limits.max_bytes / MIB:g} MiB) per image",
            )
        ]
    fmt = sniff(data)
    if fmt is None or fmt not in limits.formats:
        accepted = ", ".join(f.upper() for f in limits.formats)
        return None, [FieldViolation(field, f"not a {accepted} image (checked from its bytes)")]
    try:
        with warnings.catch_warnings():
            # A huge declared size is refused below by the side limit, not by a warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                    "transparency" in img.info
                )
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, [FieldViolation(field, f"{fmt.upper()} bytes that cannot be decoded")]
    lo, hi = limits.min_side, limits.max_side
    if not (lo <= width <= hi and lo <= height <= hi):
        return None, [
            FieldViolation(field, f"{width}x{height} pixels; each side must be {lo} to {hi}")
        ]
    return InputImage(fmt, width, height, alpha, len(data)), []


def decode(data: bytes) -> Image.Image:
    """The fully decoded image (only after `inspect` accepted it)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
