"""Admission of a request's input images: limits, formats, mask size, and the mode they ask for."""

from __future__ import annotations

from dataclasses import dataclass

from imagegate.grpckit.errors import FieldViolation
from imagegate.inputs.checks import EditMode, InputImage, InputLimits, edit_mode, inspect
from imagegate.inputs.masks import mask_from_alpha, normalize_mask
from imagegate.router.v1 import router_pb2

# Output sizes derived from an input image stay within what most edit models accept.
_DEFAULT_MAX_PIXELS = 1024 * 1024
_DEFAULT_MULTIPLE = 32
_DEFAULT_MIN_SIDE = 256


@dataclass(frozen=True)
class EditInputs:
    """Checked input images, ready for the adapter request."""

    mode: EditMode
    """What the request does with them."""
    image: bytes = b""
    """Image to redraw or repaint (empty for text-to-image and reference edits)."""
    mask: bytes = b""
    """Normalized mask (grayscale PNG, white repaints), for inpainting."""
    references: tuple[bytes, ...] = ()
    """Images of a reference edit, the edited image first."""
    size: tuple[int, int] | None = None
    """Size of the first input, from which an unset output size is derived."""
    largest_bytes: int = 0
    """Encoded length of the largest input (providers state per-image byte limits)."""


def check_inputs(
    req: router_pb2.GenerateImageRequest, limits: InputLimits
) -> tuple[EditInputs, list[FieldViolation]]:
    """Reads and checks every input image; violations name the field and what is accepted.

    Runs before any reservation or provider call, so a refused input costs nothing downstream.
    """
    refs = list(req.reference_images)
    mode = edit_mode(
        image=req.image, mask=req.mask, mask_from_alpha=req.mask_from_alpha, references=len(refs)
    )
    violations: list[FieldViolation] = []
    if req.HasField("strength"):
        if not req.image:
            violations.append(FieldViolation("strength", "only with an input image"))
        elif not 0.0 <= req.strength <= 1.0:
            violations.append(FieldViolation("strength", "must be 0 to 1"))
    if mode is EditMode.TEXT:
        return EditInputs(mode), violations
    if req.mask and req.mask_from_alpha:
        violations.append(FieldViolation("mask", "set either mask or mask_from_alpha, not both"))
    if mode is EditMode.INPAINT and not req.image:
        violations.append(FieldViolation("image", "an inpainting mask needs an input image"))
    if mode is EditMode.INPAINT and refs:
        violations.append(
            FieldViolation("reference_images", "not with a mask (reference edits take no mask)")
        )
    if len(refs) > limits.max_reference_images:
        violations.append(
            FieldViolation(
                "reference_images",
                f"{len(refs)} images; at most {limits.max_reference_images}",
            )
        )
    image_info: InputImage | None = None
    infos: list[InputImage] = []
    if req.image:
        image_info, found = inspect(req.image, "image", limits)
        violations += found
        infos += [image_info] if image_info else []
    for i, ref in enumerate(refs[: limits.max_reference_images]):
        info, found = inspect(ref, f"reference_images[{i}]", limits)
        violations += found
        infos += [info] if info else []
    mask = b""
    if req.mask:
        mask_info, found = inspect(req.mask, "mask", limits)
        violations += found
        if (
            mask_info
            and image_info
            and (mask_info.width, mask_info.height)
            != (
                image_info.width,
                image_info.height,
            )
        ):
            violations.append(
                FieldViolation(
                    "mask",
                    f"{mask_info.width}x{mask_info.height} pixels; must match the image's "
                    f"{image_info.width}x{image_info.height}",
                )
            )
        if mask_info:
            infos.append(mask_info)
    if violations:
        return EditInputs(mode), violations
    if mode is EditMode.INPAINT:
        if req.mask_from_alpha:
            derived = mask_from_alpha(req.image)
            if derived is None:
                return EditInputs(mode), [
                    FieldViolation(
                        "mask_from_alpha", "the image has no transparent pixels to repaint"
                    )
                ]
            mask = derived
        else:
            mask = normalize_mask(req.mask)
    first = image_info or (infos[0] if infos else None)
    size = (first.width, first.height) if first else None
    largest = max((i.size_bytes for i in infos), default=0)
    if mode is EditMode.REFERENCE:
        ordered = ([req.image] if req.image else []) + refs
        return EditInputs(mode, references=tuple(ordered), size=size, largest_bytes=largest), []
    return EditInputs(mode, image=req.image, mask=mask, size=size, largest_bytes=largest), []


def default_output_size(size: tuple[int, int]) -> tuple[int, int]:
    """An output size with the input's aspect ratio, at most 1 MP, sides a multiple of 32."""
    w, h = size
    scale = min(1.0, (_DEFAULT_MAX_PIXELS / (w * h)) ** 0.5)
    m = _DEFAULT_MULTIPLE

    def snap(v: float) -> int:
        return max(_DEFAULT_MIN_SIDE, int(v * scale) // m * m)

    return snap(w), snap(h)
