"""DiskResultStore: one file per result under a root folder that several processes (on one
machine or a shared volume) may use at once.

Layout: `<root>/results/<ab>/<key>.res` (key from `keys.result_key`) and `<root>/tmp/` for files
being written. A file is the manifest followed by the response and the images:

    b"IGRES1\\n" | manifest length (4 bytes, big-endian) | manifest JSON | response | image 0 | ...

A put writes the whole file under a temporary name in `<root>/tmp/`, fsyncs it and publishes it
with `os.link`, which fails when the name exists: the first put wins, atomically and across
processes, and a reader never sees a partial file. A put that finds an expired result in its
place evicts it first. Eviction (also by `sweep`) renames the file into `tmp/` before deleting
it, then checks that what it moved is the expired result; a fresh one that raced in is linked
back. All file I/O runs in worker threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from imagegate.results.keys import result_key, shard
from imagegate.results.manifest import Manifest
from imagegate.results.model import (
    Clock,
    ResultCorruptedError,
    StoredResult,
    require_aware,
    utc_now,
)

log = logging.getLogger(__name__)

MAGIC = b"IGRES1\n"
_LEN = 4
_SUFFIX = ".res"
_PUBLISH_TRIES = 4


class DiskResultStore:
    """Results as files under `root` (created when missing)."""

    def __init__(
        self,
        root: Path,
        *,
        clock: Clock = utc_now,
        durable: bool = True,
        stale_after: timedelta = timedelta(hours=1),
    ) -> None:
        """`durable` fsyncs each file and its folder before a put returns (survives a power
        loss, not only a process crash); `stale_after` is how old a leftover temporary file
        must be before `sweep` removes it (older than any put in progress)."""
        self.root = Path(root)
        self._results = self.root / "results"
        self._tmp = self.root / "tmp"
        self._clock = clock
        self._durable = durable
        self._stale_after = stale_after
        self._results.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_of(self, tenant_id: str, request_id: str) -> Path:
        """The file that holds (or would hold) a request's result."""
        key = result_key(tenant_id, request_id)
        return self._results / shard(key) / f"{key}{_SUFFIX}"

    # ---- async API ----

    async def put(
        self,
        tenant_id: str,
        request_id: str,
        response: bytes,
        images: list[bytes],
        *,
        expires_at: datetime,
    ) -> None:
        """See `ResultStore.put`."""
        expires_at = require_aware(expires_at, "expires_at")
        await asyncio.to_thread(
            self._put,
            tenant_id,
            request_id,
            bytes(response),
            [bytes(i) for i in images],
            expires_at,
        )

    async def get(self, tenant_id: str, request_id: str) -> StoredResult | None:
        """See `ResultStore.get`."""
        return await asyncio.to_thread(self._get, tenant_id, request_id)

    async def sweep(self, now: datetime) -> int:
        """See `ResultStore.sweep`."""
        return await asyncio.to_thread(self._sweep, require_aware(now, "now"))

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # ---- in a worker thread ----

    def _put(
        self,
        tenant_id: str,
        request_id: str,
        response: bytes,
        images: list[bytes],
        expires_at: datetime,
    ) -> None:
        now = require_aware(self._clock(), "clock()")
        manifest = Manifest.build(
            tenant_id, request_id, response, images, created_at=now, expires_at=expires_at
        )
        final = self.path_of(tenant_id, request_id)
        final.parent.mkdir(exist_ok=True)
        temp = self._write_temp(manifest, response, images)
        try:
            for _ in range(_PUBLISH_TRIES):
                try:
                    os.link(temp, final)
                except FileExistsError:
                    current = _read_manifest(final)
                    if current is None:  # evicted in between: publish again
                        continue
                    if current.expired(now):
                        self._evict(final, now)
                        continue
                    if not current.same_content(manifest):
                        log.warning(
                            "result of request %r (tenant %r) is stored already with other"
                            " content; keeping the first",
                            request_id,
                            tenant_id,
                        )
                    return
                else:
                    if self._durable:
                        _fsync_dir(final.parent)
                    return
            raise RuntimeError(f"could not publish the result of {request_id!r}: kept racing")
        finally:
            temp.unlink(missing_ok=True)

    def _write_temp(self, manifest: Manifest, response: bytes, images: list[bytes]) -> Path:
        header = manifest.encode()
        temp = self._tmp / f"put-{uuid.uuid4().hex}"
        with temp.open("xb") as out:
            out.write(MAGIC + len(header).to_bytes(_LEN, "big") + header)
            out.write(response)
            for image in images:
                out.write(image)
            out.flush()
            if self._durable:
                os.fsync(out.fileno())
        return temp

    def _get(self, tenant_id: str, request_id: str) -> StoredResult | None:
        path = self.path_of(tenant_id, request_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        manifest, offset = _parse_header(raw, path)
        if not manifest.belongs_to(tenant_id, request_id):
            raise ResultCorruptedError(f"{path} holds the result of another request")
        if manifest.expired(require_aware(self._clock(), "clock()")):
            return None
        response = raw[offset : offset + manifest.response.size]
        offset += manifest.response.size
        images = []
        for blob in manifest.images:
            images.append(raw[offset : offset + blob.size])
            offset += blob.size
        if offset != len(raw):
            raise ResultCorruptedError(f"{path} is {len(raw)} bytes, its manifest says {offset}")
        return manifest.result(response, images)

    def _sweep(self, now: datetime) -> int:
        removed = 0
        for path in self._results.glob(f"*/*{_SUFFIX}"):
            manifest = _read_manifest(path)
            if manifest is not None and manifest.expired(now) and self._evict(path, now):
                removed += 1
        stale = (now - self._stale_after).timestamp()
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
        return removed

    def _evict(self, path: Path, now: datetime) -> bool:
        """Deletes `path` if it holds a result expired at `now`; True when it did."""
        tomb = self._tmp / f"evict-{uuid.uuid4().hex}"
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return False
        try:
            moved = _read_manifest(tomb)
            if moved is not None and not moved.expired(now):
                # A put replaced the expired result between our read and the rename: put it back.
                with contextlib.suppress(FileExistsError):
                    os.link(tomb, path)
                return False
            return True
        finally:
            tomb.unlink(missing_ok=True)


def _parse_header(raw: bytes, path: Path) -> tuple[Manifest, int]:
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _LEN:
        raise ResultCorruptedError(f"{path} is not a stored result")
    start = len(MAGIC) + _LEN
    end = start + int.from_bytes(raw[len(MAGIC) : start], "big")
    return Manifest.decode(raw[start:end]), end


def _read_manifest(path: Path) -> Manifest | None:
    """The manifest of a result file, reading only its header; None when the file is gone."""
    try:
        with path.open("rb") as f:
            prefix = f.read(len(MAGIC) + _LEN)
            if not prefix.startswith(MAGIC) or len(prefix) < len(MAGIC) + _LEN:
                raise ResultCorruptedError(f"{path} is not a stored result")
            header = f.read(int.from_bytes(prefix[len(MAGIC) :], "big"))
    except FileNotFoundError:
        return None
    return Manifest.decode(header)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
