"""One direct adapter call, used to size the echo reply like a real GenerateImage response."""

from __future__ import annotations

from collections.abc import Mapping

from bench.clients import channels, provider_request
from imagegate.grpckit.security import transport_from_env
from imagegate.provider.v1 import provider_pb2_grpc


async def response_size(adapter_addr: str, env: Mapping[str, str] | None = None) -> int:
    """Bytes of a serialised GenerateImageResponse for the bench's tiny image (`env`: the
    stack's, for its service token)."""
    (chan,) = channels(adapter_addr, 1)
    async with chan:
        resp = await provider_pb2_grpc.ProviderServiceStub(chan).GenerateImage(
            provider_request(0),
            timeout=30,
            metadata=transport_from_env(env or {}).outbound_metadata(),
        )
    return resp.ByteSize()
