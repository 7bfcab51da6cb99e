"""`imagegate generate` and `imagegate estimate`: one Router request built from the flags."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import grpc

from imagegate.cli.connection import Connection
from imagegate.cli.enhancement import describe, progress_line
from imagegate.cli.inputs import apply_inputs
from imagegate.cli.output import as_json, proto_dict, table, usd
from imagegate.common.v1 import image_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2, router_pb2_grpc

FORMATS = {
    "png": image_pb2.IMAGE_FORMAT_PNG,
    "jpeg": image_pb2.IMAGE_FORMAT_JPEG,
    "jpg": image_pb2.IMAGE_FORMAT_JPEG,
    "webp": image_pb2.IMAGE_FORMAT_WEBP,
}
PREFERENCES = {
    "speed": router_pb2.PREFERENCE_SPEED,
    "balanced": router_pb2.PREFERENCE_BALANCED,
    "quality": router_pb2.PREFERENCE_QUALITY,
    "budget": router_pb2.PREFERENCE_BUDGET,
}
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def build_request(args: argparse.Namespace) -> router_pb2.GenerateImageRequest:
    """The Router request the generation flags describe (already checked by `flags`)."""
    req = router_pb2.GenerateImageRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        prompt=args.prompt,
        negative_prompt=args.negative or "",
        num_images=args.n,
        output_format=FORMATS[args.format],
        preference=PREFERENCES[args.preference],
        model=args.model or "",
        style=args.style or "",
        max_cost_micros=args.max_cost or 0,
        allowed_providers=args.provider or [],
        blocked_providers=args.block or [],
        allow_degradation=args.allow_degradation,
        quality=args.quality or "",
    )
    if args.size:
        req.width, req.height = args.size
    if args.seed is not None:
        req.seed = args.seed
    if args.steps is not None:
        req.steps = args.steps
    if args.guidance is not None:
        req.guidance_scale = args.guidance
    apply_inputs(args, req)
    if getattr(args, "enhance", None) is not None:
        req.enhance_prompt = args.enhance
    return req


async def cmd_generate(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate generate`: streams progress to stderr, writes the images."""
    request = build_request(args)
    live = sys.stderr.isatty() and not args.quiet
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        result: router_pb2.GenerateImageResponse | None = None
        call = stub.StreamGenerateImage(
            router_pb2.StreamGenerateImageRequest(request=request),
            metadata=conn.api_metadata(),
            timeout=args.timeout,
        )
        lines = ProgressLines(args.n)
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "result":
                result = event.result
            elif not args.quiet:
                text = lines.text(event, kind)
                if text is not None:
                    _show(event.elapsed_seconds, text, live)
        if live:
            print("\r\x1b[K", end="", file=sys.stderr)
    if result is None:
        raise ImagegateError(grpc.StatusCode.UNKNOWN, "NO_RESULT", "stream ended without a result")
    paths = _write_images(result, Path(args.output))
    if args.json:
        summary = proto_dict(result)
        for image in summary.get("images", []):
            image.pop("data", None)
        summary["files"] = [str(p) for p in paths]
        print(as_json(summary))
        return 0
    if result.replayed:
        print(
            f"replay: request_id {request.request_id} already ran; this is its stored result "
            "(nothing ran or was charged again)"
        )
    for path, image in zip(paths, result.images, strict=True):
        print(f"wrote {path} ({image.width}x{image.height} {image.mime_type})")
    for line in describe(result):
        print(line)
    attempts = ", ".join(
        f"{a.provider}:{router_pb2.AttemptOutcome.Name(a.outcome).removeprefix('ATTEMPT_OUTCOME_').lower()}"
        for a in result.attempts
    )
    print(
        f"provider {result.provider} model {result.model} ({result.provider_model}) "
        f"cost {usd(result.cost_micros)} attempts [{attempts}] trace {result.trace_id}"
    )
    for notice in result.notices:
        print(f"note: {notice}")
    for d in result.deviations:
        print(f"deviation: {d.field} asked {d.requested} got {d.delivered or '-'} ({d.reason})")
    return 0


class ProgressLines:
    """Turns stream events into progress lines: one job per image is numbered, repeats dropped.

    A provider that runs one job per image (BFL) reports each job's state; without the image
    number `--n 4` printed the same line four times.
    """

    def __init__(self, num_images: int) -> None:
        self._num_images = num_images
        self._jobs: dict[str, int] = {}
        self._last = ""

    def text(self, event: router_pb2.StreamGenerateImageResponse, kind: str | None) -> str | None:
        """The line for `event`, or None when there is nothing new to say."""
        if kind == "accepted":
            text = f"accepted; candidates: {', '.join(event.accepted.candidates)}"
        elif kind == "attempt_started":
            a = event.attempt_started
            self._jobs.clear()  # job numbers start again with each attempt
            text = f"attempt {a.attempt_number}: {a.provider} {a.provider_model}"
        elif kind == "progress":
            text = self._progress(event.progress)
        elif kind == "attempt_failed":
            f = event.attempt_failed
            text = f"attempt {f.attempt_number} failed: {f.error_reason}"
        elif kind == "failover":
            o = event.failover
            text = f"failover {o.from_provider} -> {o.to_provider} ({o.reason})"
        elif kind == "skipped":
            k = event.skipped
            text = f"skipped {k.provider} {k.provider_model}: {k.detail}"
        elif kind == "prompt_enhanced":
            text = progress_line(event.prompt_enhanced)
        else:
            return None
        if text == self._last:
            return None
        self._last = text
        return text

    def _progress(self, p: router_pb2.ProviderProgress) -> str:
        parts = [p.provider, p.state]
        if p.queue_position >= 0:
            parts.append(f"queue position {p.queue_position}")
        if p.fraction >= 0:
            parts.append(f"{p.fraction:.0%}")
        if p.provider_job_id:
            index = self._jobs.setdefault(p.provider_job_id, len(self._jobs) + 1)
            if len(self._jobs) > 1:  # one job per image: say which
                parts.append(f"(image {index} of {self._num_images})")
        return " ".join(x for x in parts if x)


def _show(elapsed: float, text: str, live: bool) -> None:
    line = f"[{elapsed:5.1f}s] {text}"
    if live:
        print(f"\r\x1b[K{line}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr)


def _write_images(result: router_pb2.GenerateImageResponse, output: Path) -> list[Path]:
    paths = []
    for index, image in enumerate(result.images, start=1):
        path = output
        if len(result.images) > 1:
            suffix = output.suffix or EXTENSIONS.get(image.mime_type, ".img")
            path = output.with_name(f"{output.stem}-{index}{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        paths.append(path)
    return paths


async def cmd_estimate(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate estimate`: prices each candidate without running the request."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.EstimateCost(
            router_pb2.EstimateCostRequest(request=build_request(args)),
            metadata=conn.api_metadata(),
            timeout=10,
        )
    rows = [
        [c.provider, c.model, c.provider_model, usd(c.cost_micros), c.skip_reason or "eligible"]
        for c in resp.candidates
    ]
    print(table(["provider", "model", "provider model", "cost", "status"], rows))
    print(f"expected cost: {usd(resp.expected_cost_micros)}")
    return 0
