"""A repeated request_id is marked as a replay; stream progress names the job each image runs as."""

from __future__ import annotations

from imagegate.providerkit.types import Progress
from imagegate.router.v1 import router_pb2
from tests.fixtures.adapters import ControllableAdapter, spec
from tests.fixtures.router_stack import bearer, start_stack

FAL = "fal-ai/flux/schnell"
PRO = bearer("key-pro")


async def test_a_repeat_is_marked_as_a_replay_in_unary_and_stream_answers() -> None:
    fal = ControllableAdapter("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        r = router_pb2.GenerateImageRequest(
            request_id="again", prompt="x", model="flux-schnell", width=256, height=256
        )
        first = await s.stub.GenerateImage(r, metadata=PRO)
        assert not first.replayed
        second = await s.stub.GenerateImage(r, metadata=PRO)
        assert second.replayed
        assert second.images[0].data == first.images[0].data
        assert second.cost_micros == first.cost_micros and second.trace_id == first.trace_id
        events = [
            e
            async for e in s.stub.StreamGenerateImage(
                router_pb2.StreamGenerateImageRequest(request=r), metadata=PRO
            )
        ]
        assert events[-1].result.replayed
        assert len(fal.calls) == 1
        # The stored result itself stays unmarked: a third repeat is a replay, not a replay of one.
        third = await s.stub.GenerateImage(r, metadata=PRO)
        assert third.replayed and third.images[0].data == first.images[0].data
        fresh = await s.stub.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="new", prompt="x", model="flux-schnell", width=256, height=256
            ),
            metadata=PRO,
        )
        assert not fresh.replayed
    finally:
        await s.stop()


class _PerImageJobs(ControllableAdapter):
    """Reports progress the way BFL does for n > 1: one job per image."""

    async def _generate(self, request, progress):  # type: ignore[no-untyped-def]
        if progress is not None:
            for i in range(request.num_images):
                await progress(Progress(state="Pending", fraction=0.0, provider_job_id=f"job-{i}"))
        self.progress_steps = 0
        return await super()._generate(request, progress)


async def test_stream_progress_carries_the_job_each_image_runs_as() -> None:
    fal = _PerImageJobs("fal", [spec(FAL)])
    s = await start_stack({"fal": fal})
    try:
        events = [
            e
            async for e in s.stub.StreamGenerateImage(
                router_pb2.StreamGenerateImageRequest(
                    request=router_pb2.GenerateImageRequest(
                        prompt="x", model="flux-schnell", width=256, height=256, num_images=4
                    )
                ),
                metadata=PRO,
            )
        ]
        jobs = [e.progress.provider_job_id for e in events if e.WhichOneof("event") == "progress"]
        assert jobs == ["job-0", "job-1", "job-2", "job-3"]
    finally:
        await s.stop()
