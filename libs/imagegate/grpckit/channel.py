"""One long-lived grpc.aio channel per downstream, with our message limits and interceptors."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from imagegate.grpckit.options import CHANNEL_OPTIONS


def create_channel(
    target: str, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """An insecure channel (loopback / service mesh) with raised message limits."""
    return grpc.aio.insecure_channel(
        target, options=CHANNEL_OPTIONS, interceptors=list(interceptors) or None
    )
