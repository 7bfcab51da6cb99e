"""One suite over every result store: DiskResultStore on a temporary folder and S3ResultStore on
moto's standalone S3 server — an emulator, run as a separate process by the fixture, because no
real S3-compatible server installs from this project's registries."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imagegate.results import DiskResultStore, S3ResultStore, results_store_from_url
from tests.fixtures.s3 import S3Server
from tests.results.conftest import BUCKET, StoreEnv

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


# Disk: results/<ab>/<key>.res; S3: <key>/manifest.json and <key>/<put id>/(response|<n>).
SAFE_NAME = re.compile(
    r"results/[0-9a-f]{2}/[0-9a-f]{64}\.res"
    r"|[0-9a-f]{64}/(manifest\.json|[0-9a-f]{32}/(response|\d+))"
)


def _images(tag: bytes, count: int = 3) -> list[bytes]:
    return [tag + PNG + bytes([n]) * n for n in range(count)]


def _in(env: StoreEnv, seconds: float) -> datetime:
    return env.clock.now + timedelta(seconds=seconds)


async def test_round_trip_with_several_images(results: StoreEnv) -> None:
    images = [*_images(b"a", 3), b""]
    expires = _in(results, 3600)
    await results.store.put("t1", "r1", b"response-1", images, expires_at=expires)
    got = await results.store.get("t1", "r1")
    assert got is not None
    assert got.response == b"response-1"
    assert got.images == images
    assert (got.created_at, got.expires_at) == (results.clock.now, expires)


async def test_absent_is_none_and_tenants_do_not_share_ids(results: StoreEnv) -> None:
    assert await results.store.get("t1", "nope") is None
    await results.store.put("t1", "r1", b"x", [], expires_at=_in(results, 60))
    assert await results.store.get("t2", "r1") is None
    got = await results.store.get("t1", "r1")
    assert got is not None and got.images == []


async def test_expired_is_none_and_swept_while_live_stays(results: StoreEnv) -> None:
    store = results.store
    await store.put("t1", "old", b"old", _images(b"o"), expires_at=_in(results, 60))
    await store.put("t1", "new", b"new", _images(b"n"), expires_at=_in(results, 7200))
    results.clock.advance(60)
    assert await store.get("t1", "old") is None
    assert (await store.get("t1", "new")) is not None
    assert await store.sweep(results.clock.now) == 1
    assert await store.sweep(results.clock.now) == 0
    got = await store.get("t1", "new")
    assert got is not None and got.response == b"new"
    # Only the live result's data is left.
    assert not any("old" in name for name in results.raw_names())
    results.clock.advance(7200)
    assert await store.sweep(results.clock.now) == 1
    assert [n for n in results.raw_names() if not n.startswith("tmp/")] == []


async def test_put_after_expiry_stores_the_new_result(results: StoreEnv) -> None:
    await results.store.put("t1", "r1", b"first", [b"1"], expires_at=_in(results, 10))
    results.clock.advance(10)
    await results.store.put("t1", "r1", b"second", [b"2"], expires_at=_in(results, 10))
    got = await results.store.get("t1", "r1")
    assert got is not None and (got.response, got.images) == (b"second", [b"2"])


async def test_results_are_immutable_and_a_repeat_put_succeeds(results: StoreEnv) -> None:
    expires = _in(results, 600)
    await results.store.put("t1", "r1", b"first", _images(b"1"), expires_at=expires)
    results.clock.advance(5)
    await results.store.put("t1", "r1", b"first", _images(b"1"), expires_at=expires)
    await results.store.put("t1", "r1", b"other", _images(b"2"), expires_at=_in(results, 9999))
    got = await results.store.get("t1", "r1")
    assert got is not None
    assert (got.response, got.images, got.expires_at) == (b"first", _images(b"1"), expires)
    assert got.created_at == results.clock.now - timedelta(seconds=5)


async def test_concurrent_puts_of_one_key_leave_one_whole_result(results: StoreEnv) -> None:
    expires = _in(results, 600)
    stores = [results.store, results.open_another()]
    contents = [(f"resp-{n}".encode(), _images(f"{n}".encode(), 1 + n % 3)) for n in range(8)]
    await asyncio.gather(
        *(
            stores[n % 2].put("t1", "same", response, images, expires_at=expires)
            for n, (response, images) in enumerate(contents)
        ),
        *(results.store.get("t1", "same") for _ in range(8)),
    )
    got = await results.store.get("t1", "same")
    assert got is not None
    assert (got.response, got.images) in contents  # one put's response with its own images
    again = await stores[1].get("t1", "same")
    assert again == got
    await stores[1].close()


async def test_put_that_died_before_its_manifest_is_absent_and_cleaned(results: StoreEnv) -> None:
    results.crash_after_images("t1", "r1", _images(b"c"))
    assert await results.store.get("t1", "r1") is None
    assert await results.store.sweep(results.clock.now) == 0
    assert results.raw_names(), "fresh leftovers may belong to a put in progress: kept"
    await results.store.put("t1", "r1", b"retried", [b"i"], expires_at=_in(results, 86400))
    got = await results.store.get("t1", "r1")
    assert got is not None and got.response == b"retried"
    # Once older than any put can take, the leftovers go; the published result stays.
    assert await results.store.sweep(results.clock.now + timedelta(hours=2)) == 0
    leftovers = [n for n in results.raw_names() if "crashed" in n or n.startswith("tmp/")]
    assert leftovers == []
    assert await results.store.get("t1", "r1") == got


@pytest.mark.parametrize(
    "request_id",
    [
        "a/b",
        "../../etc/passwd",
        "..",
        "/",
        "%2F..%2F",
        "x\\y",
        "naïve-ü-画像-🙂",
        "sp ace\t",
        "r" * 2000,
    ],
)
async def test_any_printable_request_id_makes_a_safe_key(
    results: StoreEnv, request_id: str
) -> None:
    await results.store.put(
        "t/..", request_id, request_id.encode(), [b"i"], expires_at=_in(results, 60)
    )
    await results.store.put("t/..", "other", b"other", [b"o"], expires_at=_in(results, 60))
    got = await results.store.get("t/..", request_id)
    assert got is not None and got.response == request_id.encode()
    names = results.raw_names()
    assert names
    for name in names:
        assert re.fullmatch(SAFE_NAME, name), name


async def test_two_instances_share_one_storage(results: StoreEnv) -> None:
    other = results.open_another()
    try:
        await results.store.put("t1", "r1", b"from-a", [b"a"], expires_at=_in(results, 60))
        got = await other.get("t1", "r1")
        assert got is not None and got.response == b"from-a"
        await other.put("t1", "r1", b"from-b", [b"b"], expires_at=_in(results, 60))
        again = await results.store.get("t1", "r1")
        assert again is not None and again.response == b"from-a"
        results.clock.advance(60)
        assert await other.sweep(results.clock.now) == 1
        assert await results.store.get("t1", "r1") is None
    finally:
        await other.close()


async def test_naive_times_are_refused(results: StoreEnv) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await results.store.put("t1", "r1", b"x", [], expires_at=datetime(2030, 1, 1))


def test_url_names_the_store(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(results_store_from_url(str(tmp_path / "a")), DiskResultStore)
    disk = results_store_from_url(f"file://{tmp_path}/b")
    assert isinstance(disk, DiskResultStore) and disk.root == tmp_path / "b"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    s3 = results_store_from_url(f"s3://{BUCKET}/some/prefix?endpoint={s3_server.endpoint}")
    assert isinstance(s3, S3ResultStore) and (s3.bucket, s3.prefix) == (BUCKET, "some/prefix")
    for bad in ("ftp://x/y", "s3:///nobucket", "file://host/x", "s3://b/p?colour=red"):
        with pytest.raises(ValueError):
            results_store_from_url(bad)


async def test_s3_store_from_url_takes_credentials_from_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    store = results_store_from_url(f"s3://{BUCKET}/from-url?endpoint={s3_server.endpoint}")
    expires = datetime.now(UTC) + timedelta(minutes=5)
    await store.put("t1", "r1", b"resp", [b"img"], expires_at=expires)
    got = await store.get("t1", "r1")
    assert got is not None and got.images == [b"img"]
    await store.close()
