"""Checks and normalizes a GenerateImageRequest before anything is reserved or called."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import grpc

from imagegate.common.v1 import catalog_pb2, image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument
from imagegate.inputs.checks import EditMode, InputLimits
from imagegate.pricing import QUALITIES
from imagegate.provider.v1 import provider_pb2
from imagegate.router.v1 import router_pb2
from services.router.catalog import Catalog
from services.router.inputs import EditInputs, check_inputs, default_output_size

DOMAIN = "imagegate.router"
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_PROMPT, MAX_NEGATIVE, MAX_REQUEST_ID = 4000, 2000, 128
# Model aliases and style names are short catalog ids; anything longer is refused before it
# could be echoed into an error (found by `make fuzz`: a 10 kB model name made a 20 kB
# status, past the 8 KiB of trailers a gRPC client accepts).
MAX_NAME = 100
# request_id ends up in logs, usage rows, CSV exports and result-store keys: printable ASCII
# without separators or spaces (docs/errors.md "request_id"). UUIDs and ULIDs fit.
REQUEST_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]+")
REQUEST_ID_RULE = f"at most {MAX_REQUEST_ID} characters from A-Z a-z 0-9 . _ : -"


def check_request_id(violations: list[FieldViolation], value: str, *, required: bool) -> None:
    """Adds a violation unless `value` is a valid request_id (or empty and not required)."""
    if not value:
        if required:
            violations.append(FieldViolation("request_id", "required"))
        return
    if len(value) > MAX_REQUEST_ID or not REQUEST_ID_CHARS.fullmatch(value):
        violations.append(FieldViolation("request_id", REQUEST_ID_RULE))


@dataclass
class Normalized:
    """A valid request with style and defaults applied."""

    request: router_pb2.GenerateImageRequest
    """The caller's request as received."""
    template: provider_pb2.GenerateImageRequest
    """The adapter request, `model` left empty (set per candidate)."""
    aliases: tuple[str, ...]
    """Aliases to try, in order."""
    explicit_model: str
    """The alias the caller named, or ""."""
    num_images: int
    """Images asked for."""
    megapixels: float
    """Megapixels asked for in total."""
    caller_negative: bool
    """Whether the caller (not only a style) asked for a negative prompt."""
    edit: EditInputs = field(default_factory=lambda: EditInputs(EditMode.TEXT))
    """Checked input images and the mode they ask for."""


def normalize(
    req: router_pb2.GenerateImageRequest,
    catalog: Catalog,
    input_limits: InputLimits | None = None,
) -> Normalized:
    """Validates `req`; raises INVALID_ARGUMENT with one field violation per problem."""
    violations: list[FieldViolation] = []
    edit, input_violations = check_inputs(req, input_limits or InputLimits())
    check_request_id(violations, req.request_id, required=False)
    if len(req.model) > MAX_NAME:
        violations.append(FieldViolation("model", f"at most {MAX_NAME} characters"))
    if len(req.style) > MAX_NAME:
        violations.append(FieldViolation("style", f"at most {MAX_NAME} characters"))
    if not req.prompt.strip():
        violations.append(FieldViolation("prompt", "must not be empty"))
    elif len(req.prompt) > MAX_PROMPT:
        violations.append(FieldViolation("prompt", f"at most {MAX_PROMPT} characters"))
    if len(req.negative_prompt) > MAX_NEGATIVE:
        violations.append(FieldViolation("negative_prompt", f"at most {MAX_NEGATIVE} characters"))
    n = req.num_images or 1
    if not 1 <= n <= 4:
        violations.append(FieldViolation("num_images", "must be 1 to 4 (0 or unset means 1)"))
    for name in ("width", "height"):
        if req.HasField(name) and not MIN_SIDE <= getattr(req, name) <= MAX_SIDE:
            violations.append(FieldViolation(name, f"must be {MIN_SIDE} to {MAX_SIDE} pixels"))
    if req.HasField("steps") and not 1 <= req.steps <= 150:
        violations.append(FieldViolation("steps", "must be 1 to 150"))
    if req.HasField("guidance_scale") and not 0.0 <= req.guidance_scale <= 50.0:
        violations.append(FieldViolation("guidance_scale", "must be 0 to 50"))
    if req.quality and req.quality not in QUALITIES:
        violations.append(FieldViolation("quality", f"one of {', '.join(QUALITIES)}, or empty"))
    if req.max_cost_micros < 0:
        violations.append(
            FieldViolation("max_cost_micros", "must not be negative (0 = no ceiling)")
        )
    if req.preference not in router_pb2.Preference.values():
        violations.append(FieldViolation("preference", "unknown preference"))
    if req.output_format not in image_pb2.ImageFormat.values():
        violations.append(FieldViolation("output_format", "unknown format"))
    violations += input_violations
    if violations:
        raise invalid_argument(violations, domain=DOMAIN)
    if req.model and req.model not in catalog.models:
        known = ", ".join(catalog.models)
        raise ImagegateError(
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.UNKNOWN_MODEL,
            f"unknown model {req.model!r}; known models: {known}",
            domain=DOMAIN,
            metadata={"model": req.model, "known": known},
            field_violations=[FieldViolation("model", f"unknown model; one of: {known}")],
        )
    style = None
    if req.style:
        style = catalog.styles.get(req.style)
        if style is None:
            known = ", ".join(catalog.styles)
            raise ImagegateError(
                grpc.StatusCode.INVALID_ARGUMENT,
                reasons.UNKNOWN_STYLE,
                f"unknown style {req.style!r}; known styles: {known}",
                domain=DOMAIN,
                metadata={"style": req.style, "known": known},
                field_violations=[FieldViolation("style", f"unknown style; one of: {known}")],
            )
    editing = edit.mode is not EditMode.TEXT
    aliases = (req.model,) if req.model else catalog.aliases_for(req.preference, edit=editing)
    default_size = catalog.models[aliases[0]].default_size if aliases else (1024, 1024)
    if style is not None:
        default_size = style.size
    if edit.size is not None:
        # An edit keeps its input's shape unless the caller sets a size.
        default_size = default_output_size(edit.size)
    width = req.width if req.HasField("width") else default_size[0]
    height = req.height if req.HasField("height") else default_size[1]
    prompt = style.expand(req.prompt) if style else req.prompt
    negative = style.merge_negative(req.negative_prompt) if style else req.negative_prompt
    template = provider_pb2.GenerateImageRequest(
        request_id=req.request_id,
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        num_images=n,
        output_format=req.output_format or image_pb2.IMAGE_FORMAT_PNG,
        allow_degradation=req.allow_degradation,
        quality=req.quality,
    )
    if req.HasField("seed"):
        template.seed = req.seed
    if req.HasField("steps"):
        template.steps = req.steps
    if req.HasField("guidance_scale"):
        template.guidance_scale = req.guidance_scale
    template.image = edit.image
    template.mask = edit.mask
    template.reference_images.extend(edit.references)
    if req.HasField("strength"):
        template.strength = req.strength
    return Normalized(
        request=req,
        template=template,
        aliases=aliases,
        explicit_model=req.model,
        num_images=n,
        megapixels=width * height * n / 1e6,
        caller_negative=bool(req.negative_prompt.strip()),
        edit=edit,
    )


def edit_gaps(
    caps: catalog_pb2.Capabilities, t: provider_pb2.GenerateImageRequest
) -> tuple[list[str], bool]:
    """What a model cannot do with the request's input images, and whether any gap is hard.

    Ignoring the input images would return a different picture than asked for, so a missing
    edit capability is hard; only a mask on an image-to-image model (the mask is dropped) and an
    unhonoured strength are covered by allow_degradation.
    """
    refs = len(t.reference_images)
    if t.mask:
        if caps.inpainting:
            gaps: list[str] = []
        elif caps.image_to_image:
            return ["inpainting not offered (the mask would be ignored)"], False
        else:
            return ["inpainting not offered"], True
    elif refs:
        if not caps.max_reference_images:
            return ["reference edits not offered"], True
        if refs > caps.max_reference_images:
            return [f"at most {caps.max_reference_images} reference images"], True
        gaps = []
    elif t.image:
        if not caps.image_to_image:
            return ["image-to-image not offered"], True
        gaps = []
    else:
        if caps.input_image_required:
            return ["needs an input image (edit-only model)"], True
        return [], False
    largest = max((len(b) for b in [t.image, t.mask, *t.reference_images]), default=0)
    if caps.max_input_image_bytes and largest > caps.max_input_image_bytes:
        return [f"input images above {caps.max_input_image_bytes} bytes"], True
    if t.HasField("strength") and not caps.strength:
        gaps.append("strength not honoured")
    return gaps, False


def capability_gaps(
    caps: catalog_pb2.Capabilities, t: provider_pb2.GenerateImageRequest, *, caller_negative: bool
) -> tuple[list[str], bool]:
    """What a model cannot honour, and whether any gap is one degradation cannot cover."""
    gaps, hard = edit_gaps(caps, t)
    w, h = t.width, t.height
    if caps.fixed_sizes:
        if not any(s.width == w and s.height == h for s in caps.fixed_sizes):
            gaps.append(f"size {w}x{h} not offered")
    else:
        lo, hi, mult = caps.min_side or 1, caps.max_side or 1 << 30, caps.side_multiple or 1
        if not (lo <= w <= hi and lo <= h <= hi):
            gaps.append(f"size {w}x{h} outside {lo}-{hi}")
        elif w % mult or h % mult:
            gaps.append(f"size {w}x{h} not a multiple of {mult}")
        elif caps.max_pixels and w * h > caps.max_pixels:
            gaps.append(f"size {w}x{h} above {caps.max_pixels} pixels")
    if caps.max_images and t.num_images > caps.max_images:
        # Fewer images than asked would be a success without the requested images.
        gaps.append(f"at most {caps.max_images} images")
        hard = True
    if t.HasField("seed") and not caps.seed:
        gaps.append("seed not honoured")
    if caller_negative and not caps.negative_prompt:
        gaps.append("negative prompt not honoured")
    if caps.formats and t.output_format not in caps.formats:
        gaps.append("output format unavailable")
    if t.HasField("steps") and not caps.steps:
        gaps.append("steps not settable")
    if t.HasField("guidance_scale") and not caps.guidance:
        gaps.append("guidance not settable")
    return gaps, hard
