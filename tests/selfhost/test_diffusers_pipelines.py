"""The diffusers adapter drives another pipeline family (SDXL) with the same code."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
from PIL import Image

from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.diffusers.adapter import DiffusersAdapter
from services.diffusers.config import DiffusersSettings
from tests.fixtures.tiny_pipeline import build_tiny_sdxl_pipeline

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


async def test_an_sdxl_pipeline_serves_the_sdxl_model_with_negative_prompt_and_seed(
    tiny_sdxl_dir: Path,
) -> None:
    adapter = DiffusersAdapter(
        DiffusersSettings(model_path=tiny_sdxl_dir, model_id=SDXL, device="cpu")
    )
    adapter.load()
    telemetry = setup_telemetry("diffusers-sdxl-test")
    running, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = provider_pb2_grpc.ProviderServiceStub(channel)
            described = await stub.DescribeProvider(provider_pb2.DescribeProviderRequest())
            assert [m.id for m in described.models] == [SDXL]
            resp = await stub.GenerateImage(
                provider_pb2.GenerateImageRequest(
                    request_id="sdxl-1",
                    model=SDXL,
                    prompt="a lighthouse",
                    negative_prompt="fog",
                    seed=3,
                    steps=2,
                    guidance_scale=5.0,
                    width=64,
                    height=64,
                    num_images=1,
                ),
                timeout=120,
            )
        with Image.open(io.BytesIO(resp.images[0].data)) as img:
            img.load()
            assert img.size == (64, 64)
        assert resp.images[0].seed == 3 and resp.usage.provider_seconds > 0
    finally:
        await running.stop(grace=0.1)
        await adapter.aclose()
        telemetry.shutdown()
