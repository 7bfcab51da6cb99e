"""Stream events of one request: the sink StreamGenerateImage drains, and proto helpers."""

from __future__ import annotations

import asyncio
import time

from google.protobuf import duration_pb2

from imagegate.router.v1 import router_pb2


class EventSink:
    """Collects StreamGenerateImage events; the servicer drains them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[router_pb2.StreamGenerateImageResponse | None] = asyncio.Queue()
        self.started = time.monotonic()

    def emit(self, **event: object) -> None:
        """Queues one event, stamped with the seconds since acceptance."""
        msg = router_pb2.StreamGenerateImageResponse(
            elapsed_seconds=time.monotonic() - self.started,
            **event,  # type: ignore[arg-type]
        )
        self.queue.put_nowait(msg)


def duration(seconds: float) -> duration_pb2.Duration:
    """A non-negative protobuf Duration."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return d
