"""Prompt enhancement through the Router with emulators on every hop: the enhanced prompt reaches
the image provider, the ledger bills it as its own line, a cache hit calls no text provider, and an
enhancer that is down, hanging or absent never costs the image its deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from imagegate.devstack.services import free_port
from imagegate.emulators.base import Fault
from imagegate.metering.v1 import metering_pb2
from imagegate.router.v1 import router_pb2
from tests.fixtures.enhance_world import STYLED, World, fal_prompts, knight, start_world
from tests.fixtures.router_stack import bearer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = await start_world()
    yield w
    await w.stop()


async def test_enhanced_prompt_reaches_the_image_provider_and_is_billed_as_its_own_line(
    world: World,
) -> None:
    resp = await world.router.stub.GenerateImage(
        knight("enh-1"), metadata=bearer("key-pro"), timeout=20
    )
    assert len(resp.images) == 1
    e = resp.enhancement
    assert e.status == router_pb2.ENHANCEMENT_STATUS_APPLIED
    assert (e.provider, e.provider_model) == ("groq", "llama-3.1-8b-instant")
    assert e.original_prompt == STYLED
    assert e.usage.input_tokens > 0 and e.usage.output_tokens > 0
    assert e.cost_nanos > 0 and not e.cached
    assert resp.sent_prompt != STYLED and "highly detailed" in resp.sent_prompt
    assert fal_prompts(world) == [resp.sent_prompt]
    assert not any("enhancement" in n for n in resp.notices)
    record = world.router.metering.records[("t_pro", "enh-1")]
    lines = {a.kind: a for a in record.attempts}
    line = lines[metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT]
    assert (line.provider, line.provider_model, line.succeeded) == (
        "groq",
        "llama-3.1-8b-instant",
        False,
    )
    assert line.usage.input_tokens == e.usage.input_tokens
    assert line.usage.output_tokens == e.usage.output_tokens
    assert line.attempt_number == 2
    image = lines[metering_pb2.BILLING_LINE_KIND_UNSPECIFIED]
    assert image.provider == "fal" and image.succeeded
    # The tenant pays for the image; the rewrite is the gateway's own provider cost.
    assert resp.cost_micros == record.tenant_charge_micros
    assert record.cost_micros == record.tenant_charge_micros + e.cost_micros


async def test_identical_rewrite_is_a_cache_hit_with_no_second_text_provider_call(
    world: World,
) -> None:
    assert world.enhancer is not None
    first = await world.router.stub.GenerateImage(
        knight("c-1"), metadata=bearer("key-pro"), timeout=20
    )
    second = await world.router.stub.GenerateImage(
        knight("c-2"), metadata=bearer("key-pro"), timeout=20
    )
    assert len(world.enhancer.emulators["groq"].calls) == 1
    assert second.enhancement.cached and second.enhancement.cost_nanos == 0
    assert second.sent_prompt == first.sent_prompt
    assert fal_prompts(world) == [first.sent_prompt, first.sent_prompt]
    record = world.router.metering.records[("t_pro", "c-2")]
    assert [a.kind for a in record.attempts] == [metering_pb2.BILLING_LINE_KIND_UNSPECIFIED]


async def test_style_default_enhances_and_the_field_opts_out(world: World) -> None:
    styled = router_pb2.GenerateImageRequest(
        request_id="d-1", prompt="knight", model="flux-schnell", style="game-sprite"
    )
    resp = await world.router.stub.GenerateImage(styled, metadata=bearer("key-pro"), timeout=20)
    assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_APPLIED
    off = knight("d-2", enhance_prompt=False)
    resp = await world.router.stub.GenerateImage(off, metadata=bearer("key-pro"), timeout=20)
    assert not resp.HasField("enhancement")
    assert resp.sent_prompt == STYLED
    plain = router_pb2.GenerateImageRequest(request_id="d-3", prompt="knight", model="flux-schnell")
    resp = await world.router.stub.GenerateImage(plain, metadata=bearer("key-pro"), timeout=20)
    assert not resp.HasField("enhancement") and resp.sent_prompt == "knight"


async def test_tag_style_model_gets_a_tag_prompt_request(world: World) -> None:
    assert world.enhancer is not None
    await world.router.stub.GenerateImage(
        knight("t-1", model="sdxl"), metadata=bearer("key-pro"), timeout=20
    )
    (call,) = world.enhancer.emulators["groq"].calls
    user = call.body["messages"][-1]["content"]
    assert "comma-separated tags" in user and "Target image model: sdxl" in user


async def test_every_text_provider_hanging_still_delivers_the_image_in_time_with_a_notice(
    world: World,
) -> None:
    assert world.enhancer is not None
    for emulator in world.enhancer.emulators.values():
        emulator.faults.set(Fault("hang"))
    resp = await world.router.stub.GenerateImage(
        knight("h-1"), metadata=bearer("key-pro"), timeout=8
    )
    assert len(resp.images) == 1
    assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_TIMED_OUT
    assert resp.sent_prompt == STYLED and fal_prompts(world) == [STYLED]
    assert any("prompt enhancement skipped" in n for n in resp.notices)
    record = world.router.metering.records[("t_pro", "h-1")]
    assert [a.kind for a in record.attempts] == [metering_pb2.BILLING_LINE_KIND_UNSPECIFIED]


async def test_every_text_provider_failing_sends_the_original_prompt_with_a_notice(
    world: World,
) -> None:
    assert world.enhancer is not None
    for emulator in world.enhancer.emulators.values():
        emulator.faults.set(Fault("error_503"))
    resp = await world.router.stub.GenerateImage(
        knight("f-1"), metadata=bearer("key-pro"), timeout=20
    )
    assert len(resp.images) == 1
    assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_UNAVAILABLE
    assert "ENHANCER_UNAVAILABLE" in resp.enhancement.detail
    assert resp.sent_prompt == STYLED


async def test_enhancer_process_down_still_delivers_the_image_with_a_notice() -> None:
    w = await start_world(enhancer=False, enhancer_addr=f"127.0.0.1:{free_port()}")
    try:
        resp = await w.router.stub.GenerateImage(
            knight("x-1"), metadata=bearer("key-pro"), timeout=20
        )
        assert len(resp.images) == 1
        assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_UNAVAILABLE
        assert resp.sent_prompt == STYLED and fal_prompts(w) == [STYLED]
        assert any("prompt enhancement skipped" in n for n in resp.notices)
    finally:
        await w.stop()


async def test_no_enhancer_configured_answers_with_the_original_prompt_and_a_notice() -> None:
    w = await start_world(enhancer=False)
    try:
        resp = await w.router.stub.GenerateImage(
            knight("n-1"), metadata=bearer("key-pro"), timeout=20
        )
        assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_NOT_CONFIGURED
        assert any("prompt enhancement skipped" in n for n in resp.notices)
        styled = router_pb2.GenerateImageRequest(
            request_id="n-2", prompt="knight", model="flux-schnell", style="game-sprite"
        )
        resp = await w.router.stub.GenerateImage(styled, metadata=bearer("key-pro"), timeout=20)
        assert not resp.HasField("enhancement") and not resp.notices
    finally:
        await w.stop()


async def test_list_styles_reports_each_style_enhancement_default(world: World) -> None:
    resp = await world.router.stub.ListStyles(
        router_pb2.ListStylesRequest(), metadata=bearer("key-pro"), timeout=5
    )
    defaults = {s.name: s.enhance_by_default for s in resp.styles}
    assert defaults["game-sprite"] and not defaults["pixel-art"]


def test_enhancement_budget_is_a_capped_share_of_what_is_left() -> None:
    from services.router.config import RouterSettings
    from services.router.enhancement import PromptEnhancementStep

    step = PromptEnhancementStep.__new__(PromptEnhancementStep)
    step.settings = RouterSettings(enhance_deadline_share=0.15, enhance_max_seconds=6.0)
    assert step.budget(10.0) == pytest.approx(1.5)
    assert step.budget(120.0) == 6.0
    assert step.budget(-1.0) == 0.0


async def test_grpc_status_of_enhancer_is_never_the_callers_error(world: World) -> None:
    assert world.enhancer is not None
    world.enhancer.emulators["groq"].faults.set(Fault("auth_failed"))
    world.enhancer.emulators["cerebras"].faults.set(Fault("auth_failed"))
    try:
        resp = await world.router.stub.GenerateImage(
            knight("g-1"), metadata=bearer("key-pro"), timeout=20
        )
    except grpc.aio.AioRpcError as err:  # pragma: no cover - the assertion below explains
        pytest.fail(f"enhancer failure surfaced to the caller: {err.code()}")
    assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_UNAVAILABLE
    assert "gsk-test" not in resp.enhancement.detail


async def test_stream_reports_the_enhancement_before_the_attempts_and_traces_it(
    world: World,
) -> None:
    call = world.router.stub.StreamGenerateImage(
        router_pb2.StreamGenerateImageRequest(request=knight("s-1")),
        metadata=bearer("key-pro"),
        timeout=20,
    )
    kinds, events = [], []
    async for event in call:
        kinds.append(event.WhichOneof("event"))
        events.append(event)
    assert kinds.index("prompt_enhanced") < kinds.index("attempt_started")
    enhanced = events[kinds.index("prompt_enhanced")].prompt_enhanced
    assert enhanced.status == router_pb2.ENHANCEMENT_STATUS_APPLIED
    assert events[-1].result.enhancement == enhanced
    spans = {s.name: s for s in world.router.spans.get_finished_spans()}
    span = spans["router.enhance_prompt"]
    assert span.attributes is not None
    assert span.attributes["imagegate.enhance.provider"] == "groq"
    assert span.parent is not None
    assert span.parent.span_id == spans["router.generate"].context.span_id


async def test_enhancer_without_any_text_key_is_reported_as_not_configured() -> None:
    w = await start_world(groq_key=None, cerebras_key=None)
    try:
        resp = await w.router.stub.GenerateImage(
            knight("k-1"), metadata=bearer("key-pro"), timeout=20
        )
        assert resp.enhancement.status == router_pb2.ENHANCEMENT_STATUS_NOT_CONFIGURED
        assert resp.sent_prompt == STYLED
        assert any("prompt enhancement skipped" in n for n in resp.notices)
        styled = router_pb2.GenerateImageRequest(
            request_id="k-2", prompt="knight", model="flux-schnell", style="game-sprite"
        )
        resp = await w.router.stub.GenerateImage(styled, metadata=bearer("key-pro"), timeout=20)
        assert not resp.HasField("enhancement") and not resp.notices
        assert resp.sent_prompt == STYLED
    finally:
        await w.stop()


async def test_tokens_spent_are_billed_even_when_every_image_attempt_fails(world: World) -> None:
    world.fal.faults.set(Fault("error_503"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.router.stub.GenerateImage(
            knight("fail-1"), metadata=bearer("key-pro"), timeout=20
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    record = world.router.metering.records[("t_pro", "fail-1")]
    assert record.outcome == metering_pb2.REQUEST_OUTCOME_FAILED
    (line,) = record.attempts
    assert line.kind == metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT
    assert line.provider == "groq" and line.usage.output_tokens > 0
