"""EstimateCost over gRPC reports each candidate in the unit Metering prices it in."""

from __future__ import annotations

from pydantic import SecretStr

from imagegate.common.v1 import catalog_pb2
from imagegate.router.v1 import router_pb2
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings
from services.metering.catalog import load_catalog as load_prices
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings
from tests.fixtures.router_stack import bearer, start_stack

KEY = SecretStr("test-key-never-sent")


async def test_estimate_cost_reports_metering_units_for_models_the_catalog_once_misstated() -> None:
    fal = FalAdapter(FalSettings(key=KEY))
    replicate = ReplicateAdapter(ReplicateSettings(key=KEY))
    stack = await start_stack(
        {"fal": fal, "replicate": replicate}, prices=list(load_prices().prices)
    )
    try:
        units: dict[str, int] = {}
        for alias in ("flux-pro", "sdxl"):
            est = await stack.stub.EstimateCost(
                router_pb2.EstimateCostRequest(
                    request=router_pb2.GenerateImageRequest(prompt="a lighthouse", model=alias)
                ),
                metadata=bearer("key-pro"),
            )
            units |= {f"{c.provider}/{c.provider_model}": c.price_unit for c in est.candidates}
        assert units["fal/fal-ai/flux-pro/v1.1"] == catalog_pb2.PRICE_UNIT_MEGAPIXEL
        assert units["fal/fal-ai/fast-sdxl"] == catalog_pb2.PRICE_UNIT_IMAGE
        assert units["replicate/stability-ai/sdxl"] == catalog_pb2.PRICE_UNIT_COMPUTE_SECOND
        # Candidates skipped for want of an adapter still show Metering's unit.
        assert units["bfl/flux-pro-1.1"] == catalog_pb2.PRICE_UNIT_IMAGE
    finally:
        await stack.stop()
        await fal.aclose()
        await replicate.aclose()


async def test_list_models_shows_the_capabilities_the_adapter_describes() -> None:
    fal = FalAdapter(FalSettings(key=KEY))
    stack = await start_stack({"fal": fal}, prices=list(load_prices().prices))
    try:
        resp = await stack.stub.ListModels(
            router_pb2.ListModelsRequest(), metadata=bearer("key-pro")
        )
        pro = next(m for m in resp.models if m.alias == "flux-pro")
        described = next(m for m in fal.models() if m.id == "fal-ai/flux-pro/v1.1")
        assert pro.providers == ["fal"]
        assert (pro.capabilities.max_side, pro.capabilities.side_multiple) == (
            described.sizes.max_side,
            described.sizes.multiple,
        )
        assert pro.capabilities.steps is described.steps is False
    finally:
        await stack.stop()
        await fal.aclose()
