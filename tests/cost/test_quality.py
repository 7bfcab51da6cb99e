"""Per-request quality: it reaches OpenAI, sets the price, and the hold covers its worst case."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.router.v1 import router_pb2
from tests.cost.stack import cost_stack

PROMPT = "a lighthouse at dusk"


@pytest.mark.timeout(90)
async def test_quality_is_per_request_and_priced_by_what_openai_bills(tmp_path: Path) -> None:
    async with cost_stack(tmp_path, f"sqlite:///{tmp_path / 'm.db'}") as stack:
        answers = {}
        for quality in ("low", "high", ""):
            estimate = await stack.router.EstimateCost(
                router_pb2.EstimateCostRequest(
                    request=router_pb2.GenerateImageRequest(
                        prompt=PROMPT,
                        model="gpt-image-1",
                        width=1024,
                        height=1024,
                        quality=quality,
                    )
                ),
                metadata=stack.auth,
            )
            resp = await stack.router.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=f"q-{quality or 'default'}",
                    prompt=PROMPT,
                    model="gpt-image-1",
                    width=1024,
                    height=1024,
                    quality=quality,
                ),
                metadata=stack.auth,
                timeout=30,
            )
            answers[quality] = (estimate.expected_cost_micros, resp)
        sent = [c.body["quality"] for c in stack.emulators["openai"].calls_to("/images")]
        # Flux on fal has no quality knob: the setting is reported, not refused.
        flux = await stack.router.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="q-flux",
                prompt=PROMPT,
                model="flux-schnell",
                allowed_providers=["fal"],
                width=1024,
                height=768,
                quality="high",
            ),
            metadata=stack.auth,
            timeout=30,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.router.GenerateImage(
                router_pb2.GenerateImageRequest(prompt=PROMPT, quality="ultra"),
                metadata=stack.auth,
                timeout=10,
            )
        quota = (
            await stack.router.GetQuota(router_pb2.GetQuotaRequest(), metadata=stack.auth)
        ).quota
        bill = stack.emulators["openai"].billed_micros()
    # The request's own setting reaches OpenAI (empty: the adapter's default, "auto").
    assert sent == ["low", "high", "auto"]
    low_quote, low = answers["low"]
    high_quote, high = answers["high"]
    auto_quote, auto = answers[""]
    assert low.usage.output_tokens == 272 and high.usage.output_tokens == 4160
    # Charged what OpenAI billed, never capped by the hold: the quote covers the worst case.
    assert low.cost_micros == 272 * 40 + low.usage.input_tokens * 5 <= low_quote
    assert high.cost_micros == 4160 * 40 + high.usage.input_tokens * 5 <= high_quote
    assert auto.cost_micros <= auto_quote == high_quote  # "auto" is held as "high"
    assert quota.used_cost_micros == low.cost_micros + high.cost_micros + auto.cost_micros + (
        flux.cost_micros
    )
    assert bill == low.cost_micros + high.cost_micros + auto.cost_micros
    assert [(d.field, d.requested) for d in flux.deviations] == [("quality", "high")]
    parsed = parse_rpc_error(info.value)
    assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parsed.field_violations] == ["quality"]
    assert parsed.reason == reasons.INVALID_ARGUMENT
