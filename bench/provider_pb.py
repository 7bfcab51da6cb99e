"""One direct adapter call, used to size the echo reply like a real GenerateImage response."""

from __future__ import annotations

from bench.clients import channels, provider_request
from imagegate.provider.v1 import provider_pb2_grpc


async def response_size(adapter_addr: str) -> int:
    """Bytes of a serialised GenerateImageResponse for the bench's tiny image."""
    (chan,) = channels(adapter_addr, 1)
    async with chan:
        resp = await provider_pb2_grpc.ProviderServiceStub(chan).GenerateImage(
            provider_request(0), timeout=30
        )
    return resp.ByteSize()
