"""DeviceWorker: one job at a time, a bounded wait list, places given up when callers leave."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from services.diffusers.worker import Cancelled, DeviceWorker, Job, QueueFull, WaitTooLong


def blocking(
    release: threading.Event, started: threading.Event | None = None
) -> Callable[[Job[str]], str]:
    """Work that holds the device until `release` is set, checking for cancellation."""

    def work(job: Job[str]) -> str:
        if started is not None:
            started.set()
        while not release.wait(0.01):
            job.check()
        return "done"

    return work


def far() -> float:
    return time.monotonic() + 60


async def test_one_runs_the_limit_waits_and_the_next_is_refused_at_once() -> None:
    worker = DeviceWorker(max_queue=1)
    release = threading.Event()
    first = asyncio.ensure_future(worker.submit(Job(deadline_at=far()), blocking(release)))
    assert await worker.wait_until("busy", timeout=10)
    second = asyncio.ensure_future(worker.submit(Job(deadline_at=far()), blocking(release)))
    await asyncio.sleep(0)
    assert (worker.running, worker.waiting) == (1, 1)
    with pytest.raises(QueueFull):
        await worker.submit(Job(deadline_at=far()), blocking(release))
    release.set()
    assert await asyncio.gather(first, second) == ["done", "done"]
    assert worker.completed == 2
    worker.close()


async def test_a_waiting_caller_that_leaves_gives_its_place_up_at_once() -> None:
    worker = DeviceWorker(max_queue=1)
    release = threading.Event()
    running = asyncio.ensure_future(worker.submit(Job(deadline_at=far()), blocking(release)))
    assert await worker.wait_until("busy", timeout=10)
    waiting = asyncio.ensure_future(worker.submit(Job(deadline_at=far()), blocking(release)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert worker.waiting == 0
    # Its place is free for the next caller while the first job still runs.
    third = asyncio.ensure_future(worker.submit(Job(deadline_at=far()), blocking(release)))
    await asyncio.sleep(0)
    assert worker.waiting == 1
    release.set()
    assert await asyncio.gather(running, third) == ["done", "done"]
    worker.close()


async def test_a_running_job_stops_at_its_deadline_and_frees_the_device() -> None:
    worker = DeviceWorker(max_queue=0)
    never = threading.Event()
    with pytest.raises(Cancelled):
        await worker.submit(Job(deadline_at=time.monotonic() + 0.2), blocking(never))
    assert await worker.wait_until("idle", timeout=10)
    assert worker.interrupted == 1
    worker.close()


async def test_work_ahead_longer_than_the_deadline_is_refused_before_queueing() -> None:
    worker = DeviceWorker(max_queue=4)
    release, started = threading.Event(), threading.Event()
    job: Job[str] = Job(deadline_at=far(), steps=100, units=100.0)

    def slow(j: Job[str]) -> str:
        started.set()
        time.sleep(0.05)
        worker.step_done(j, 1)
        while not release.wait(0.01):
            j.check()
        return "done"

    running = asyncio.ensure_future(worker.submit(job, slow))
    assert await worker.wait_until("measured", timeout=10)
    # About 99 more steps of at least 0.05 s each are ahead: at least ~5 s.
    assert worker.expected_wait() > 4
    with pytest.raises(WaitTooLong):
        await worker.submit(Job(deadline_at=time.monotonic() + 2, units=1.0), blocking(release))
    assert worker.waiting == 0
    release.set()
    assert await running == "done"
    worker.close()
