"""`generate --image/--strength/--mask/--mask-from-alpha/--reference`: input images from files."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from imagegate.inputs.checks import InputLimits, sniff
from imagegate.router.v1 import router_pb2

# The Router's default limits (it is the one that enforces them; this only fails earlier).
_LIMITS = InputLimits()


def _max_bytes() -> int:
    """IMAGEGATE_MAX_INPUT_IMAGE_BYTES when set (the variable the services read), else 10 MiB."""
    raw = os.environ.get("IMAGEGATE_MAX_INPUT_IMAGE_BYTES", "")
    return int(raw) if raw.isdigit() else _LIMITS.max_bytes


def image_file(text: str) -> bytes:
    """The bytes of a PNG, JPEG or WebP file no larger than the Router accepts."""
    path = Path(text)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {err.strerror}") from None
    limit = _max_bytes()
    if size > limit:
        raise argparse.ArgumentTypeError(f"{text!r} is {size} bytes; at most {limit}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {err.strerror}") from None
    if sniff(data) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a PNG, JPEG or WebP image")
    return data


def strength(text: str) -> float:
    """A number from 0 (keep the input) to 1 (ignore it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Adds the input-image flags (docs/edits.md)."""
    p.add_argument(
        "--image", type=image_file, metavar="FILE", help="input image: redraw it (image-to-image)"
    )
    p.add_argument(
        "--strength", type=strength, help="how far to move from --image, 0 (keep) to 1 (ignore)"
    )
    p.add_argument(
        "--mask",
        type=image_file,
        metavar="FILE",
        help="repaint only where this mask is white (or transparent); same size as --image",
    )
    p.add_argument(
        "--mask-from-alpha",
        action="store_true",
        help="repaint where --image is transparent (no separate mask)",
    )
    p.add_argument(
        "--reference",
        action="append",
        type=image_file,
        metavar="FILE",
        help=f"reference image for an instruction edit (repeatable, at most "
        f"{_LIMITS.max_reference_images})",
    )


def apply_inputs(args: argparse.Namespace, req: router_pb2.GenerateImageRequest) -> None:
    """Copies the input-image flags into the request (the Router validates them)."""
    if getattr(args, "image", None):
        req.image = args.image
    if getattr(args, "strength", None) is not None:
        req.strength = args.strength
    if getattr(args, "mask", None):
        req.mask = args.mask
    req.mask_from_alpha = bool(getattr(args, "mask_from_alpha", False))
    req.reference_images.extend(getattr(args, "reference", None) or [])
