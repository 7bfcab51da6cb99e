"""host:port addresses checked before any bind or dial (gRPC wraps a port past 65535 silently)."""

from __future__ import annotations

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError


def check_address(value: str, *, variable: str = "address", allow_zero: bool = False) -> str:
    """`value` unchanged when it is host:port with a port from 1 (0 if allowed) to 65535.

    Raises INVALID_ARGUMENT (reason BAD_ADDRESS) naming `variable` otherwise: gRPC itself would
    dial or bind port 99999 as 34463 without a word.
    """
    host, sep, port = value.strip().rpartition(":")
    low = 0 if allow_zero else 1
    if not sep or not host or not port.isascii() or not port.isdigit() or len(port) > 5:
        ok = False
    else:
        ok = low <= int(port) <= 65535
    if not ok:
        raise ImagegateError(
            grpc.StatusCode.INVALID_ARGUMENT,
            reasons.BAD_ADDRESS,
            f"{variable}={value!r} is not host:port with a port from {low} to 65535",
            metadata={"variable": variable, "value": value},
        )
    return value.strip()
