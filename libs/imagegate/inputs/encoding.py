"""Input images as providers take them inline: base64 and data URIs (never caller URLs)."""

from __future__ import annotations

import base64
import secrets
from email.parser import BytesParser
from email.policy import default

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


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; files are (field, filename, bytes)."""
    boundary = f"imagegate-{secrets.token_hex(12)}"
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, filename, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {mime_type(data)}\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """The parts of a multipart/form-data body as (field, filename or None, bytes)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=default).parsebytes(head + body)
    parts: list[tuple[str, str | None, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        parts.append((name, part.get_filename(), payload if isinstance(payload, bytes) else b""))
    return parts
