"""Input images at the adapter boundary: checked again, matched against the model's edit capabilities."""

from __future__ import annotations

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import FieldViolation
from imagegate.inputs.checks import EditMode, InputLimits, edit_mode, inspect
from imagegate.inputs.masks import mask_size
from imagegate.provider.v1 import provider_pb2
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import Deviation, ModelSpec


def input_violations(
    r: provider_pb2.GenerateImageRequest, limits: InputLimits
) -> list[FieldViolation]:
    """Every input image within the gateway's limits, and a mask of the image's size.

    The Router checked them already; an adapter is its own service and checks what it is sent.
    """
    out: list[FieldViolation] = []
    image_size = None
    if r.image:
        info, found = inspect(r.image, "image", limits)
        out += found
        image_size = (info.width, info.height) if info else None
    for i, ref in enumerate(r.reference_images):
        out += inspect(ref, f"reference_images[{i}]", limits)[1]
    if len(r.reference_images) > limits.max_reference_images:
        out.append(
            FieldViolation("reference_images", f"at most {limits.max_reference_images} images")
        )
    if r.mask:
        if not r.image:
            out.append(FieldViolation("mask", "a mask needs an input image"))
        info, found = inspect(r.mask, "mask", limits)
        out += found
        if info and image_size and mask_size(r.mask) != image_size:
            out.append(
                FieldViolation(
                    "mask",
                    f"{info.width}x{info.height} pixels; must match the image's "
                    f"{image_size[0]}x{image_size[1]}",
                )
            )
    if r.reference_images and (r.image or r.mask):
        out.append(FieldViolation("reference_images", "a reference edit carries no image or mask"))
    if r.HasField("strength") and not 0.0 <= r.strength <= 1.0:
        out.append(FieldViolation("strength", "must be 0 to 1"))
    return out


def edit_inputs(
    spec: ModelSpec, r: provider_pb2.GenerateImageRequest
) -> tuple[bytes, bytes, tuple[bytes, ...], float | None, list[Deviation]]:
    """(image, mask, references, strength) the model can take, and what it cannot honour.

    A missing edit capability is refused (the result would ignore the caller's images); only a
    mask on an image-to-image model and an unhonoured strength can degrade.
    """
    mode = edit_mode(
        image=r.image, mask=r.mask, mask_from_alpha=False, references=len(r.reference_images)
    )
    image, mask, refs = r.image, r.mask, tuple(r.reference_images)
    strength = r.strength if r.HasField("strength") else None
    unsupported: list[Deviation] = []

    def refuse(what: str) -> ProviderError:
        return ProviderError(
            reasons.PROVIDER_UNSUPPORTED_PARAMETER,
            f"{spec.id} cannot honour: {what}",
            extra={"fields": "image,mask,reference_images"},
        )

    if mode is EditMode.TEXT:
        if spec.input_image_required:
            raise refuse("a request without an input image (edit-only model)")
        return image, mask, refs, strength, unsupported
    if mode is EditMode.INPAINT and not spec.inpainting:
        if not spec.image_to_image:
            raise refuse("inpainting")
        unsupported.append(Deviation("mask", "mask", "", "inpainting not offered; mask ignored"))
        mask = b""
    if mode is EditMode.IMAGE_TO_IMAGE and not spec.image_to_image:
        raise refuse("image-to-image")
    if mode is EditMode.REFERENCE:
        if not spec.max_reference_images:
            raise refuse("reference edits")
        if len(refs) > spec.max_reference_images:
            raise refuse(f"{len(refs)} reference images (at most {spec.max_reference_images})")
    largest = max((len(b) for b in (image, mask, *refs)), default=0)
    if spec.max_input_image_bytes and largest > spec.max_input_image_bytes:
        raise refuse(f"input images above {spec.max_input_image_bytes} bytes")
    if strength is not None and not spec.strength:
        unsupported.append(Deviation("strength", f"{strength:g}", "", "not settable"))
        strength = None
    return image, mask, refs, strength, unsupported
