"""Deterministic procedural images from prompt + seed, drawn with Pillow."""

from __future__ import annotations

import hashlib
import random

from PIL import Image, ImageDraw

from imagegate.providerkit.images import encode
from imagegate.providerkit.types import OutputFormat


def derive_seed(prompt: str, negative_prompt: str, seed: int | None, index: int) -> int:
    """A 63-bit seed from the request; the same inputs always give the same image."""
    text = f"{prompt}\x00{negative_prompt}\x00{seed if seed is not None else 'auto'}\x00{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def render(
    prompt: str,
    width: int,
    height: int,
    seed: int,
    fmt: OutputFormat,
    detail: int = 24,
) -> bytes:
    """A gradient sky, hills and shapes whose colours and layout come from `seed`."""
    rng = random.Random(seed)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / max(1, height - 1)
        colour = tuple(int(top[i] * (1 - t) + bottom[i] * t) for i in range(3))
        draw.line([(0, y), (width, y)], fill=colour)
    for _ in range(max(1, detail)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(max(2, min(width, height) // 16), max(3, min(width, height) // 4))
        fill = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.randrange(3)
        box = [x - r, y - r, x + r, y + r]
        if shape == 0:
            draw.ellipse(box, fill=fill)
        elif shape == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    if width >= 128 and height >= 64:
        label = prompt[: max(8, width // 9)]
        draw.rectangle([0, height - 18, width, height], fill=(0, 0, 0))
        draw.text((4, height - 16), label, fill=(255, 255, 255))
    return encode_fast(img, fmt)


def encode_fast(img: Image.Image, fmt: OutputFormat) -> bytes:
    """Encodes with a low PNG compression level: the local backend optimises for latency."""
    if fmt is OutputFormat.PNG:
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    return encode(img, fmt)


def redraw(
    source: bytes,
    art: bytes,
    width: int,
    height: int,
    strength: float,
    fmt: OutputFormat,
    mask: bytes = b"",
) -> bytes:
    """Image-to-image on the CPU: the input blended toward a fresh render by `strength`.

    With a mask (white repaints) only the masked area changes, the rest keeps the input's
    pixels exactly: a simple, real inpainting the local backend can honestly declare.
    """
    import io

    with Image.open(io.BytesIO(source)) as src:
        base = src.convert("RGB").resize((width, height))
    with Image.open(io.BytesIO(art)) as rendered:
        moved = Image.blend(base, rendered.convert("RGB").resize((width, height)), strength)
    if mask:
        with Image.open(io.BytesIO(mask)) as m:
            moved = Image.composite(moved, base, m.convert("L").resize((width, height)))
    return encode_fast(moved, fmt)
