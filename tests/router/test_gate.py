"""The Router-side adapter concurrency gate: FIFO hand-over, timeouts, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.router.adapters import Gate


async def test_unlimited_gate_never_waits() -> None:
    gate = Gate(0)
    assert all([await gate.acquire(0) for _ in range(100)])


async def test_waiters_get_slots_in_arrival_order() -> None:
    gate = Gate(1)
    assert await gate.acquire(1)
    order: list[int] = []

    async def waiter(i: int) -> None:
        assert await gate.acquire(5)
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and gate.in_flight == 1
    gate.release()
    assert gate.in_flight == 0


async def test_timeout_gives_up_without_leaking_a_slot() -> None:
    gate = Gate(1)
    assert await gate.acquire(1)
    assert not await gate.acquire(0.05)
    assert gate.waiting == 0
    gate.release()
    assert gate.in_flight == 0
    assert await gate.acquire(0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    gate = Gate(1)
    assert await gate.acquire(1)
    task = asyncio.create_task(gate.acquire(10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.release()
    assert gate.in_flight == 0 and gate.waiting == 0
