"""Provider-neutral request, result, capability and progress types used by every adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from imagegate.inputs.checks import EditMode, edit_mode


class OutputFormat(StrEnum):
    """Image encodings a caller may ask for."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def mime_type(self) -> str:
        """The MIME type of the encoding."""
        return f"image/{self.value}"


class PriceUnit(StrEnum):
    """How a provider bills a model (mirrors imagegate.common.v1.PriceUnit)."""

    MEGAPIXEL = "megapixel"
    IMAGE = "image"
    COMPUTE_SECOND = "compute_second"
    TOKEN = "token"
    FREE = "free"


@dataclass(frozen=True)
class GenerationRequest:
    """A normalized text-to-image request, already validated by the servicer."""

    request_id: str
    """The Router's request id."""
    model: str
    """The provider's own model id."""
    prompt: str
    """Prompt text."""
    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""
    num_images: int = 1
    """Number of images, 1 to 4."""
    negative_prompt: str = ""
    """Negative prompt; empty when not wanted."""
    seed: int | None = None
    """Seed, or None to let the provider choose."""
    output_format: OutputFormat = OutputFormat.PNG
    """Format the caller wants."""
    steps: int | None = None
    """Inference steps, or None for the model default."""
    guidance_scale: float | None = None
    """Guidance scale, or None for the model default."""
    allow_degradation: bool = False
    """Report unsupported parameters as deviations instead of failing."""
    quality: str = ""
    """Quality setting ("low", "medium", "high", "auto"), or "" for the adapter's default; only
    for models whose spec lists it in `qualities`."""
    image: bytes = b""
    """Input image to redraw (image-to-image) or repaint (with `mask`); empty otherwise."""
    strength: float | None = None
    """How far the result may move from `image` (0 keeps it, 1 ignores it); None: default."""
    mask: bytes = b""
    """Grayscale PNG mask of `image`'s size, white repaints; empty when not inpainting."""
    reference_images: tuple[bytes, ...] = ()
    """Images of an instruction edit, the edited image first; empty otherwise."""

    @property
    def mode(self) -> EditMode:
        """What the request does with its input images."""
        return edit_mode(
            image=self.image,
            mask=self.mask,
            mask_from_alpha=False,
            references=len(self.reference_images),
        )

    @property
    def inputs(self) -> tuple[bytes, ...]:
        """Every input image, the edited one first (reference edits) or the image alone."""
        return self.reference_images or ((self.image,) if self.image else ())


@dataclass(frozen=True)
class GeneratedImage:
    """One delivered image, with facts measured from its bytes."""

    data: bytes
    """Encoded bytes in `format`."""
    format: OutputFormat
    """Encoding of `data`, detected from the bytes."""
    width: int
    """Measured width in pixels."""
    height: int
    """Measured height in pixels."""
    seed: int | None = None
    """Seed the provider reports for this image."""

    @property
    def megapixels(self) -> float:
        """width x height / 1e6."""
        return self.width * self.height / 1_000_000


@dataclass(frozen=True)
class Deviation:
    """A parameter that was not honoured exactly."""

    field: str
    """Request field."""
    requested: str
    """What was asked."""
    delivered: str
    """What was delivered."""
    reason: str
    """Why."""


@dataclass
class GenerationResult:
    """What an adapter returns: images plus the usage the provider will bill."""

    images: list[GeneratedImage]
    """Exactly the requested number of images."""
    provider_job_id: str = ""
    """The provider's job or request id."""
    provider_seconds: float = 0.0
    """Compute seconds the provider reported."""
    input_tokens: int = 0
    """Input tokens the provider reported."""
    output_tokens: int = 0
    """Output tokens the provider reported."""
    deviations: list[Deviation] = field(default_factory=list)
    """Parameters not honoured exactly."""
    model: str = ""
    """Provider model id that served the call (defaults to the requested one)."""


@dataclass(frozen=True)
class SizeRule:
    """Accepted output sizes."""

    min_side: int = 64
    """Smallest side."""
    max_side: int = 2048
    """Largest side."""
    multiple: int = 1
    """Sides must be a multiple of this."""
    fixed: tuple[tuple[int, int], ...] = ()
    """When non-empty, only these (width, height) pairs."""
    max_pixels: int = 0
    """Largest width x height; 0 for no limit beyond the sides."""


@dataclass(frozen=True)
class ModelSpec:
    """A model an adapter serves, with what it can honour and how it is billed."""

    id: str
    """Provider model id."""
    sizes: SizeRule
    """Accepted sizes."""
    max_images: int = 4
    """Most images per call."""
    seed: bool = True
    """Seed honoured."""
    negative_prompt: bool = False
    """Negative prompt honoured."""
    formats: tuple[OutputFormat, ...] = (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP)
    """Formats deliverable (natively or by conversion)."""
    steps: bool = True
    """Steps settable."""
    guidance: bool = True
    """Guidance settable."""
    price_unit: PriceUnit = PriceUnit.IMAGE
    """Usage unit the provider bills and the adapter must measure; Metering's prices.yaml owns it."""
    qualities: tuple[str, ...] = ()
    """Quality settings the model takes (its price depends on them); empty: no quality knob."""
    image_to_image: bool = False
    """Redraws an input image (with `strength` when `strength` is True)."""
    inpainting: bool = False
    """Repaints the masked area of an input image."""
    max_reference_images: int = 0
    """Most images of an instruction edit; 0 when the model takes none."""
    strength: bool = False
    """Honours `strength`."""
    input_image_required: bool = False
    """Edit-only: never serves a text-to-image request."""
    max_input_image_bytes: int = 0
    """Largest input image the provider takes; 0 when only the gateway's limit applies."""


@dataclass(frozen=True)
class Progress:
    """Progress of a provider job."""

    state: str
    """Provider's own state name."""
    queue_position: int = -1
    """Requests ahead; -1 unknown."""
    fraction: float = -1.0
    """0..1; -1 unknown."""
    provider_job_id: str = ""
    """Job id once known."""


ProgressSink = Callable[[Progress], Awaitable[None]]
