"""Reflection answers as v1 and v1alpha; a port past 65535 is refused before gRPC wraps it."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from imagegate.grpckit import reasons
from imagegate.grpckit.address import check_address
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME
from imagegate.grpckit.server import start_server
from imagegate.provider.v1 import provider_pb2_grpc


async def _ask(
    channel: grpc.aio.Channel, service: str, request: reflection_pb2.ServerReflectionRequest
):
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [r async for r in call(iter([request]), timeout=10)]


@pytest.mark.parametrize("service", [V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME])
async def test_reflection_lists_services_and_files_under_both_versions(service: str) -> None:
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[
            lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(
                provider_pb2_grpc.ProviderServiceServicer(), s
            )
        ],
        service_names=["imagegate.provider.v1.ProviderService"],
        domain="imagegate.test",
    )
    try:
        async with create_channel(running.address) as channel:
            (listed,) = await _ask(
                channel, service, reflection_pb2.ServerReflectionRequest(list_services="")
            )
            names = {s.name for s in listed.list_services_response.service}
            assert {
                "imagegate.provider.v1.ProviderService",
                "grpc.health.v1.Health",
                V1_SERVICE_NAME,
                V1ALPHA_SERVICE_NAME,
            } <= names
            (found,) = await _ask(
                channel,
                service,
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="imagegate.provider.v1.ProviderService"
                ),
            )
            assert found.file_descriptor_response.file_descriptor_proto
    finally:
        await running.stop(0)


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "127.0.0.1:", ":50051", "localhost", "h:-1"])
def test_an_address_whose_port_gRPC_would_wrap_or_reject_is_refused(value: str) -> None:
    with pytest.raises(ImagegateError) as info:
        check_address(value, variable="IMAGEGATE_X_ADDR")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.reason == reasons.BAD_ADDRESS
    assert "IMAGEGATE_X_ADDR" in info.value.message and "65535" in info.value.message


def test_good_addresses_pass_and_port_zero_only_when_allowed() -> None:
    assert check_address("127.0.0.1:65535") == "127.0.0.1:65535"
    assert check_address("[::]:50051") == "[::]:50051"
    assert check_address("127.0.0.1:0", allow_zero=True) == "127.0.0.1:0"
    with pytest.raises(ImagegateError):
        check_address("127.0.0.1:0")


async def test_a_server_refuses_to_listen_on_a_port_past_65535() -> None:
    with pytest.raises(RuntimeError, match="99999"):
        await start_server(
            address="127.0.0.1:99999", registrars=[], service_names=[], domain="imagegate.test"
        )
