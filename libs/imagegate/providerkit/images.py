"""Image bytes: detect the real format (providers mislabel it), measure, convert."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from imagegate.grpckit import reasons
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import GeneratedImage, OutputFormat

_PIL_FORMAT = {OutputFormat.PNG: "PNG", OutputFormat.JPEG: "JPEG", OutputFormat.WEBP: "WEBP"}


def sniff_format(data: bytes) -> OutputFormat | None:
    """The encoding named by the magic bytes, or None when it is not PNG, JPEG or WebP."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return OutputFormat.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return OutputFormat.JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return OutputFormat.WEBP
    return None


def encode(image: Image.Image, fmt: OutputFormat) -> bytes:
    """Encodes a PIL image; JPEG drops alpha."""
    buf = io.BytesIO()
    if fmt is OutputFormat.JPEG and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    kwargs = {"quality": 90} if fmt in (OutputFormat.JPEG, OutputFormat.WEBP) else {}
    image.save(buf, format=_PIL_FORMAT[fmt], **kwargs)
    return buf.getvalue()


def _complete(data: bytes, fmt: OutputFormat) -> bool:
    """Cheap end-of-file checks where verify() reads no further than the header (JPEG, WebP)."""
    if fmt is OutputFormat.JPEG:
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt is OutputFormat.WEBP:
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return True


def normalize_image(
    data: bytes, wanted: OutputFormat, *, seed: int | None = None
) -> GeneratedImage:
    """Checks the bytes are a real image, measures it, and converts it to `wanted` if needed.

    Raises ProviderError(PROVIDER_BAD_RESPONSE) for bytes that are not a decodable image.
    """
    actual = sniff_format(data)
    if actual is None:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE,
            f"provider returned {len(data)} bytes that are not a PNG, JPEG or WebP image",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if actual is wanted and _complete(data, actual):
                # Structure and checksums only: a full decode costs 1 ms per 256x256 PNG and
                # 8 ms per 1024x1024, and the bytes are passed through untouched anyway.
                img.verify()
            else:
                img.load()
                data = encode(img, wanted)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ProviderError(
            reasons.PROVIDER_BAD_RESPONSE, f"provider image could not be decoded: {err}"
        ) from err
    return GeneratedImage(data=data, format=wanted, width=width, height=height, seed=seed)
