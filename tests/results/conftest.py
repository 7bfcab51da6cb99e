"""Fixtures: every result store on fresh storage — a disk root in a temporary folder, and an S3
prefix on moto's standalone server (an S3 emulator in its own process, see tests/fixtures/s3.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import obstore
import pytest

from imagegate.results import DiskResultStore, ResultStore, S3ResultStore
from imagegate.results.keys import result_key
from tests.fixtures.s3 import S3Server, moto_server
from tests.persistence.clock import FakeClock

BUCKET = "results"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One emulator process for the session, with the test bucket."""
    with moto_server() as server:
        server.create_bucket(BUCKET)
        yield server


@dataclass
class StoreEnv:
    """A store under test, the clock it reads, and a way to open a second instance over the same
    storage (as another Router replica would)."""

    kind: str
    store: ResultStore
    clock: FakeClock
    open_another: Callable[[], ResultStore]
    crash_after_images: Callable[[str, str, list[bytes]], None]
    """Leaves storage as a put that died after writing its images, before its manifest."""
    raw_names: Callable[[], list[str]]
    """Every file or object name the store wrote, relative to its root or prefix."""


def _disk(root: Path, clock: FakeClock) -> StoreEnv:
    def open_another() -> ResultStore:
        return DiskResultStore(root, clock=clock)

    def crash(tenant: str, request_id: str, images: list[bytes]) -> None:
        # A disk put writes everything to one temporary file before publishing it.
        (root / "tmp" / f"put-{uuid.uuid4().hex}").write_bytes(b"IGRES1\n" + b"".join(images))

    def names() -> list[str]:
        return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]

    return StoreEnv("disk", open_another(), clock, open_another, crash, names)


def _s3(server: S3Server, clock: FakeClock) -> StoreEnv:
    prefix = f"t-{uuid.uuid4().hex[:12]}"

    def open_another() -> S3ResultStore:
        return S3ResultStore(
            BUCKET,
            prefix,
            server.endpoint,
            region=server.region,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
            clock=clock,
        )

    first = open_another()

    def crash(tenant: str, request_id: str, images: list[bytes]) -> None:
        key = result_key(tenant, request_id)
        for n, image in enumerate(images):
            obstore.put(first._store, f"{key}/crashed/{n}", image)

    def names() -> list[str]:
        return [m["path"] for batch in obstore.list(first._store) for m in batch]

    return StoreEnv("s3", first, clock, open_another, crash, names)


@pytest.fixture(params=["disk", "s3"])
async def results(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreEnv]:
    """Each store on empty storage, with a fake clock starting at the real time (S3 stamps
    objects with the server's clock, which `sweep` compares against)."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    if request.param == "disk":
        env = _disk(tmp_path / "results", clock)
    else:
        env = _s3(request.getfixturevalue("s3_server"), clock)
    try:
        yield env
    finally:
        await env.store.close()
