"""The whole stack as real processes with TLS on (`make certs` + IMAGEGATE_TLS_DIR)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.grpckit.tls import channel_credentials
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import RunningStack, start_stack
from tests.security.conftest import tls_files


@pytest.fixture(scope="module")
async def tls_stack(
    tmp_path_factory: pytest.TempPathFactory, certs: Path
) -> AsyncIterator[RunningStack]:
    """Every service with its own certificate from the dev CA; internal hops are mTLS."""
    running = await start_stack(
        tmp_path_factory.mktemp("tls-stack") / "data", IMAGEGATE_TLS_DIR=str(certs)
    )
    yield running
    await running.stack.stop()


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_client_trusting_the_dev_ca_generates_through_the_tls_stack(
    tls_stack: RunningStack, certs: Path
):
    creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    async with create_channel(tls_stack.stack.address("router"), credentials=creds) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id=str(uuid.uuid4()),
                prompt="a lighthouse at dusk",
                width=256,
                height=256,
                output_format=image_pb2.IMAGE_FORMAT_PNG,
            ),
            metadata=_auth(tls_stack.api_key),
            timeout=60,
        )
        quota = (
            await stub.GetQuota(
                router_pb2.GetQuotaRequest(), metadata=_auth(tls_stack.api_key), timeout=10
            )
        ).quota
    # Router -> Quota (reserve, commit) -> local adapter -> Metering, every hop over mTLS.
    assert len(resp.images) == 1 and resp.provider == "local"
    assert quota.used_images >= 1


async def test_client_without_the_dev_ca_is_refused(tls_stack: RunningStack):
    system_roots = grpc.ssl_channel_credentials()
    async with create_channel(
        tls_stack.stack.address("router"), credentials=system_roots
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                router_pb2.ListModelsRequest(), metadata=_auth(tls_stack.api_key), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused(tls_stack: RunningStack):
    async with create_channel(tls_stack.stack.address("router")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterServiceStub(channel).ListModels(
                router_pb2.ListModelsRequest(), metadata=_auth(tls_stack.api_key), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_quota_process_refuses_a_tenant_key_on_reserve_quota(
    tls_stack: RunningStack, certs: Path
):
    # Our CA's `admin` certificate gets through TLS; the tenant key gets it nothing more.
    creds = channel_credentials(tls_files(certs, "admin"))
    async with create_channel(tls_stack.stack.address("quota"), credentials=creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await quota_pb2_grpc.QuotaServiceStub(channel).ReserveQuota(
                quota_pb2.ReserveQuotaRequest(
                    request_id="r-1", api_key=tls_stack.api_key, images=1
                ),
                metadata=_auth(tls_stack.api_key),
                timeout=10,
            )
    parsed = parse_rpc_error(err.value)
    assert parsed.code == grpc.StatusCode.PERMISSION_DENIED
    assert parsed.reason == reasons.SERVICE_NOT_ALLOWED


async def test_quota_process_refuses_a_client_without_a_certificate(
    tls_stack: RunningStack, certs: Path
):
    only_ca = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    async with create_channel(tls_stack.stack.address("quota"), credentials=only_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await quota_pb2_grpc.QuotaServiceStub(channel).ReserveQuota(
                quota_pb2.ReserveQuotaRequest(
                    request_id="r-2", api_key=tls_stack.api_key, images=1
                ),
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def _cli(tls_stack: RunningStack, *args: str, api_key: str = "") -> tuple[int, str, str]:
    env = dict(tls_stack.env)
    env["IMAGEGATE_ROUTER_ADDR"] = tls_stack.stack.address("router")
    env["IMAGEGATE_QUOTA_ADDR"] = tls_stack.stack.address("quota")
    env.pop("IMAGEGATE_API_KEY", None)
    if api_key:
        env["IMAGEGATE_API_KEY"] = api_key
    proc = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "imagegate"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_uses_the_certificate_directory(tls_stack: RunningStack):
    code, out, err = await _cli(tls_stack, "admin", "tenant-list")
    assert code == 0, err
    assert "dev" in out


async def test_cli_rotates_a_key_with_an_overlap_and_lists_keys_without_secrets(
    tls_stack: RunningStack,
):
    code, out, err = await _cli(tls_stack, "admin", "key-create", "t_none")
    assert code != 0  # an unknown tenant: nothing created
    old_key = tls_stack.api_key
    old_id = "_".join(old_key.split("_")[:2])
    code, out, err = await _cli(tls_stack, "admin", "key-rotate", old_id, "--overlap", "1h")
    assert code == 0, err
    new_key = out.split("api key (shown once): ")[1].split()[0]
    assert f"{old_id} stops working at" in out
    for key in (old_key, new_key):  # both work during the overlap
        code, out, err = await _cli(tls_stack, "quota", api_key=key)
        assert code == 0, err
    code, listing, err = await _cli(tls_stack, "admin", "key-list")
    assert code == 0, err
    assert old_id in listing and "_".join(new_key.split("_")[:2]) in listing
    assert old_key.split("_", 2)[2] not in listing and new_key.split("_", 2)[2] not in listing
    code, out, err = await _cli(tls_stack, "admin", "key-revoke", old_id)
    assert code == 0, err
    code, out, err = await _cli(tls_stack, "quota", api_key=old_key)
    assert code != 0 and "API_KEY_REVOKED" in err
