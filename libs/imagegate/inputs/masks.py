"""The one mask convention inside the gateway (grayscale, white repaints) and the providers' forms."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from imagegate.inputs.checks import decode


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def has_transparency(img: Image.Image) -> bool:
    """Whether any pixel is not fully opaque."""
    if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
        return False
    lo, _ = img.convert("RGBA").getchannel("A").getextrema()
    return isinstance(lo, int | float) and lo < 255


def mask_from_alpha(image: bytes) -> bytes | None:
    """A grayscale PNG mask from an image's alpha (transparent repaints); None without any."""
    img = decode(image)
    if not has_transparency(img):
        return None
    return _png(ImageOps.invert(img.convert("RGBA").getchannel("A")))


def normalize_mask(mask: bytes) -> bytes:
    """The caller's mask as a grayscale PNG, white repaints.

    A mask with transparency follows OpenAI's convention (transparent pixels are repainted);
    any other mask is read as black and white (BFL, fal, Replicate, diffusers).
    """
    img = decode(mask)
    if has_transparency(img):
        return _png(ImageOps.invert(img.convert("RGBA").getchannel("A")))
    return _png(img.convert("L"))


def alpha_mask_png(mask: bytes) -> bytes:
    """OpenAI's form of a gateway mask: an RGBA PNG, transparent where the image is repainted."""
    gray = decode(mask).convert("L")
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 255))
    rgba.putalpha(ImageOps.invert(gray))
    return _png(rgba)


def mask_size(mask: bytes) -> tuple[int, int]:
    """(width, height) of a mask."""
    with Image.open(io.BytesIO(mask)) as img:
        return img.size


def resized(data: bytes, size: tuple[int, int]) -> bytes:
    """The image (or mask) at `size`, unchanged when it already is; PNG otherwise."""
    img = decode(data)
    if img.size == size:
        return data
    return _png(img.resize(size))
