"""The ComfyUI adapter against its emulator: templates filled, progress, interrupt at the deadline."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image

from imagegate.emulators.base import Fault
from imagegate.emulators.comfyui import ComfyUIEmulator
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.grpckit.server import RunningServer
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.telemetry import setup_telemetry
from services.comfyui.adapter import ComfyUIAdapter
from services.comfyui.config import ComfyUISettings
from services.comfyui.workflows import WorkflowError, load_workflows


@dataclass
class Comfy:
    """An emulator, the adapter served over gRPC, and a stub."""

    emulator: ComfyUIEmulator
    server: RunningServer
    channel: grpc.aio.Channel
    stub: provider_pb2_grpc.ProviderServiceStub
    adapter: ComfyUIAdapter


@pytest.fixture
async def comfy() -> AsyncIterator[Comfy]:
    emulator = ComfyUIEmulator()
    base_url = await emulator.start()
    adapter = ComfyUIAdapter(ComfyUISettings(base_url=base_url))
    telemetry = setup_telemetry("adapter-comfyui-test")
    server, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=telemetry)
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Comfy(
            emulator, server, channel, provider_pb2_grpc.ProviderServiceStub(channel), adapter
        )
    finally:
        await channel.close()
        await server.stop(0)
        await adapter.aclose()
        await emulator.stop()
        telemetry.shutdown()


def request(**fields: object) -> provider_pb2.GenerateImageRequest:
    values: dict[str, object] = {
        "request_id": "comfy-1",
        "model": "sdxl",
        "prompt": "a lighthouse at dusk",
        "width": 832,
        "height": 640,
        "num_images": 1,
        **fields,
    }
    return provider_pb2.GenerateImageRequest(**values)  # type: ignore[arg-type]


async def test_request_values_land_in_the_named_nodes_of_the_template(comfy: Comfy) -> None:
    resp = await comfy.stub.GenerateImage(
        request(negative_prompt="fog", seed=77, steps=9, guidance_scale=4.5, num_images=2),
        timeout=15,
    )
    (posted,) = comfy.emulator.calls_to("/prompt", "POST")
    graph = posted.body["prompt"]
    assert graph["6"]["inputs"]["text"] == "a lighthouse at dusk"
    assert graph["7"]["inputs"]["text"] == "fog"
    sampler = graph["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (77, 9, 4.5)
    assert graph["5"]["inputs"] == {"width": 832, "height": 640, "batch_size": 2}
    assert graph["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"
    assert all("_meta" not in node for node in graph.values())
    assert len(resp.images) == 2 and resp.usage.provider_seconds > 0
    for image in resp.images:
        with Image.open(io.BytesIO(image.data)) as img:
            assert img.size == (832, 640)


async def test_stream_reports_every_sampler_step_from_the_socket(comfy: Comfy) -> None:
    fractions = []
    async for event in comfy.stub.StreamGenerateImage(
        provider_pb2.StreamGenerateImageRequest(request=request(steps=4)), timeout=15
    ):
        if event.WhichOneof("event") == "progress" and event.progress.state == "SAMPLING":
            fractions.append(event.progress.fraction)
    assert fractions == [0.25, 0.5, 0.75, 1.0]


async def test_a_passed_deadline_interrupts_the_prompt_on_the_server(comfy: Comfy) -> None:
    comfy.emulator.faults.set(Fault("never_complete", count=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await comfy.stub.GenerateImage(request(), timeout=1.5)
    parsed = parse_rpc_error(caught.value)
    assert (parsed.code, parsed.reason) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        reasons.PROVIDER_TIMEOUT,
    )
    (job,) = comfy.emulator.jobs.values()
    await comfy.emulator.wait_until(lambda: job.state == "interrupted", timeout=5)
    assert comfy.emulator.interrupts == [job.id]
    # The server is free again: the next prompt runs to the end.
    resp = await comfy.stub.GenerateImage(request(request_id="comfy-2"), timeout=15)
    assert len(resp.images) == 1


async def test_a_workflow_the_server_refuses_fails_over_not_blames_the_caller(
    comfy: Comfy,
) -> None:
    comfy.emulator.outputs.clear()
    # The emulator refuses graphs without sampler inputs, as ComfyUI refuses a missing node.
    workflow = comfy.adapter._workflows["sdxl"]
    del workflow.graph["3"]["inputs"]["steps"]
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await comfy.stub.GenerateImage(request(), timeout=15)
    finally:
        workflow.graph["3"]["inputs"]["steps"] = 30
    parsed = parse_rpc_error(caught.value)
    assert (parsed.code, parsed.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        reasons.PROVIDER_UNAVAILABLE,
    )
    assert "prompt_outputs_failed_validation" in parsed.message


async def test_describe_reports_what_each_template_can_set(comfy: Comfy) -> None:
    resp = await comfy.stub.DescribeProvider(provider_pb2.DescribeProviderRequest(), timeout=5)
    models = {m.id: m.capabilities for m in resp.models}
    assert set(models) == {"sd-2.1", "sdxl", "flux-schnell"}
    assert models["sdxl"].negative_prompt and models["sdxl"].guidance
    assert not models["flux-schnell"].negative_prompt and not models["flux-schnell"].guidance
    assert models["flux-schnell"].side_multiple == 16


def test_a_template_naming_a_missing_input_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "workflows.yaml"
    path.write_text(
        "models:\n  m:\n    inputs: {prompt: p.text, width: l.width, height: l.nope}\n"
        "    workflow:\n"
        "      '1': {class_type: CLIPTextEncode, _meta: {title: p}, inputs: {text: ''}}\n"
        "      '2': {class_type: EmptyLatentImage, _meta: {title: l}, inputs: {width: 1, height: 1}}\n"
        "      '3': {class_type: SaveImage, inputs: {images: ['1', 0]}}\n"
    )
    with pytest.raises(WorkflowError, match="no input 'nope'"):
        load_workflows(path)


def test_a_token_is_never_sent_in_clear_to_another_machine() -> None:
    settings = ComfyUISettings(base_url="http://comfy.internal:8188", key="t0ken")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="https"):
        ComfyUIAdapter(settings)
