"""One long-lived grpc.aio channel per downstream, with our message limits and interceptors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from imagegate.grpckit.options import CHANNEL_OPTIONS


def create_channel(
    target: str,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel with raised message limits: TLS with `credentials`, else plaintext."""
    merged = [*CHANNEL_OPTIONS, *options]
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=merged, interceptors=list(interceptors) or None
        )
    return grpc.aio.insecure_channel(
        target, options=merged, interceptors=list(interceptors) or None
    )
