"""One device, one pipeline call at a time: a bounded wait list and cancellation between steps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The device is busy and its wait list is full."""

    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"device busy and {waiting} requests waiting (limit {limit})")
        self.waiting = waiting
        self.limit = limit


class WaitTooLong(Exception):
    """The work ahead on the device would outlast the job's deadline."""

    def __init__(self, expected: float, remaining: float) -> None:
        super().__init__(
            f"device busy for about {expected:.1f}s more, the deadline is in {remaining:.1f}s"
        )
        self.expected = expected
        self.remaining = remaining


class Cancelled(Exception):
    """A job stopped because its deadline passed or its caller left."""


@dataclass
class Job(Generic[T]):
    """One admitted call and whether it should still run."""

    deadline_at: float
    """Monotonic time after which no further step is worth running."""
    state: str = "waiting"
    """waiting -> running -> done, or waiting -> dropped."""
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when the caller no longer wants the result."""
    steps: int = 1
    """Denoising steps the job runs."""
    units: float = 0.0
    """Its size in work units (steps x megapixels x images): what device time scales with."""
    steps_done: int = 0
    """Denoising steps completed so far."""
    started_at: float = 0.0
    """Monotonic time it got the device."""
    seconds: float = 0.0
    """Time the call held the device (what compute-second prices bill)."""

    def check(self) -> None:
        """Raises Cancelled when the job should stop (called between steps)."""
        if self.cancel.is_set() or time.monotonic() >= self.deadline_at:
            raise Cancelled()


class DeviceWorker:
    """Runs blocking jobs one at a time on a dedicated thread; at most `max_queue` wait.

    A waiting job whose caller leaves gives its place up at once; a running one is asked to
    stop at its next step and holds the device until it has.
    """

    def __init__(self, max_queue: int, *, name: str = "diffusers-device") -> None:
        self._max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        # Notified on every change of the counters below (waiters: shutdown, tests).
        self._changed = threading.Condition(self._lock)
        self._waiting = 0
        self._running = 0
        self.completed = 0
        self.interrupted = 0
        self._running_job: Job[object] | None = None
        self._waiting_units = 0.0
        # Device seconds per work unit, learnt from finished and running jobs (0: not yet).
        self._seconds_per_unit = 0.0

    def expected_wait(self) -> float:
        """Seconds until a job admitted now would start: the rest of the running job plus the
        wait list, at the measured speed (0 until a job has run a step)."""
        with self._lock:
            speed = self._seconds_per_unit
            job = self._running_job
            left = self._waiting_units
            if job is not None and job.steps_done > 0:
                elapsed = time.monotonic() - job.started_at
                per_step = elapsed / job.steps_done
                speed = speed or per_step * job.steps / max(job.units, 1e-9)
                return per_step * (job.steps - job.steps_done) + left * speed
            if job is not None:
                left += job.units
            return left * speed

    @property
    def waiting(self) -> int:
        """Jobs admitted and not started."""
        return self._waiting

    @property
    def running(self) -> int:
        """Jobs on the device now (0 or 1)."""
        return self._running

    @property
    def capacity(self) -> int:
        """Jobs admitted at most: the running one plus the wait list."""
        return 1 + self._max_queue

    async def submit(self, job: Job[T], work: Callable[[Job[T]], T]) -> T:
        """Runs `work(job)` on the device thread; raises QueueFull without waiting when full.

        Cancelling the awaiting task cancels the job: a waiting one never starts, a running one
        stops at its next step (`work` calls `job.check()` between steps).
        """
        with self._lock:
            if self._running + self._waiting >= self.capacity:
                raise QueueFull(self._waiting, self._max_queue)
        busy = self._running + self._waiting > 0
        expected = self.expected_wait() if busy else 0.0
        remaining = job.deadline_at - time.monotonic()
        if expected > remaining:
            raise WaitTooLong(expected, remaining)
        with self._lock:
            self._waiting += 1
            self._waiting_units += job.units
            self._changed.notify_all()
        future = self._executor.submit(self._run, job, work)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            job.cancel.set()
            with self._lock:
                if job.state == "waiting":
                    job.state = "dropped"
                    self._waiting -= 1
                    self._waiting_units -= job.units
                    self._changed.notify_all()
            raise

    def _run(self, job: Job[T], work: Callable[[Job[T]], T]) -> T:
        with self._lock:
            if job.state == "dropped":
                raise Cancelled()
            job.state = "running"
            self._waiting -= 1
            self._waiting_units -= job.units
            self._running += 1
            self._running_job = job  # type: ignore[assignment]
            job.started_at = time.monotonic()
            self._changed.notify_all()
        started = time.perf_counter()
        try:
            job.check()
            return work(job)
        except Cancelled:
            self.interrupted += 1
            raise
        finally:
            job.seconds = time.perf_counter() - started
            with self._lock:
                if job.steps_done and job.units > 0:
                    # Fraction of the job that ran, so a stopped one teaches the speed too.
                    rate = job.seconds / (job.units * job.steps_done / job.steps)
                    old = self._seconds_per_unit
                    self._seconds_per_unit = rate if old == 0 else 0.7 * old + 0.3 * rate
                self._running_job = None
                job.state = "done"
                self._running -= 1
                self.completed += 1
                self._changed.notify_all()

    def step_done(self, job: Job[T], steps_done: int) -> None:
        """Records a finished denoising step of the running job (it refines expected_wait)."""
        with self._lock:
            job.steps_done = steps_done
            self._changed.notify_all()

    async def wait_until(self, what: str, timeout: float) -> bool:
        """Waits (off the event loop) until the device is "idle" (nothing running or waiting)
        , "busy" (a job running) or "measured" (the running job has done a step, so the wait
        ahead can be estimated); False when `timeout` passed first."""
        tests = {
            "idle": lambda: self._running == 0 and self._waiting == 0,
            "busy": lambda: self._running > 0,
            "measured": lambda: self._running_job is not None and self._running_job.steps_done > 0,
        }
        predicate = tests[what]

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(predicate, timeout)

        return await asyncio.to_thread(wait)

    def close(self) -> None:
        """Stops taking jobs; the running one finishes or stops at its deadline."""
        self._executor.shutdown(wait=False, cancel_futures=True)
