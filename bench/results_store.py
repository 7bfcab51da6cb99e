"""Time one put and one get of a 1 MiB result (response + 4 images of 256 KiB) on the disk result
store, fsync on and off; prints the median and p90 of `--runs` rounds, each on a fresh key.

    python -m bench.results_store [--runs 50] [--root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagegate.results import DiskResultStore

IMAGE = 256 * 1024


async def _round(store: DiskResultStore, n: int, images: list[bytes]) -> tuple[float, float]:
    expires = datetime.now(UTC) + timedelta(hours=1)
    start = time.perf_counter()
    await store.put("bench", f"r-{n}", b"response", images, expires_at=expires)
    put = time.perf_counter()
    got = await store.get("bench", f"r-{n}")
    end = time.perf_counter()
    assert got is not None and got.images == images
    return (put - start) * 1000, (end - put) * 1000


def _line(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"{name:<10} median {statistics.median(ms):7.2f} ms   p90 {p90:7.2f} ms"


async def main(runs: int, root: Path) -> None:
    images = [os.urandom(IMAGE) for _ in range(4)]
    for durable in (True, False):
        store = DiskResultStore(root / f"durable-{durable}", durable=durable)
        times = [await _round(store, n, images) for n in range(runs)]
        print(f"disk, 1 MiB result, fsync {'on' if durable else 'off'}, {runs} rounds:")
        print("  " + _line("put", [p for p, _ in times]))
        print("  " + _line("get", [g for _, g in times]))
        print("  " + _line("put+get", [p + g for p, g in times]))
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--root", type=Path, default=None, help="folder (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as scratch:
        asyncio.run(main(args.runs, Path(scratch)))
