"""Input images as providers take them inline: base64 and data URIs (never caller URLs)."""

from __future__ import annotations

import base64

from imagegate.inputs.checks import sniff


def b64(data: bytes) -> str:
    """Standard base64 text of the bytes."""
    return base64.b64encode(data).decode("ascii")


def mime_type(data: bytes) -> str:
    """image/png, image/jpeg or image/webp from the bytes (PNG when unknown)."""
    return f"image/{sniff(data) or 'png'}"


def data_uri(data: bytes) -> str:
    """A data: URI carrying the image, for APIs whose image fields take URLs."""
    return f"data:{mime_type(data)};base64,{b64(data)}"


def from_data_uri(value: str) -> bytes | None:
    """The bytes of a base64 data: URI, or None when `value` is not one."""
    head, sep, payload = value.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        return None
