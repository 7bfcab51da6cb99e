"""S3ResultStore: results in an S3-compatible bucket, through obstore.

Layout under the prefix, for key = `keys.result_key(tenant, request_id)`:

    <key>/manifest.json               the manifest, written last, read first
    <key>/<put id>/response           the parts of one put, in a folder of their own
    <key>/<put id>/<n>                image n

A put uploads its parts into a fresh folder, then creates the manifest with `If-None-Match: *`:
the first put wins and the others' parts are left as orphans for `sweep`. Because every put
writes its own folder, a racing or crashed put never overwrites the parts a manifest points at.
A put that finds an expired manifest replaces it with `If-Match` on its ETag. `get` reads the
manifest, treats expired as absent, then fetches the parts concurrently and checks each digest.
`sweep` lists the prefix, deletes expired results (manifest first, so readers stop seeing them,
then its parts) and parts that no manifest points at once they are older than `stale_after`
(left by a put that crashed before its manifest, or lost the race and crashed before cleaning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store

from imagegate.results.keys import result_key
from imagegate.results.manifest import Manifest
from imagegate.results.model import (
    Clock,
    ResultCorruptedError,
    StoredResult,
    require_aware,
    utc_now,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_PUBLISH_TRIES = 4
# obstore raises FileNotFoundError for a missing object on get, NotFoundError elsewhere.
_MISSING = (FileNotFoundError, NotFoundError)


class S3ResultStore:
    """Results in `bucket` under `prefix`, on AWS S3 or any S3-compatible endpoint.

    Credentials and region not given here come from the standard AWS environment variables
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, ...).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        clock: Clock = utc_now,
        stale_after: timedelta = timedelta(hours=1),
    ) -> None:
        """`stale_after`: how old the parts of a put without a manifest must be before `sweep`
        deletes them (longer than any put takes)."""
        config: dict[str, Any] = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        for name, value in (
            ("region", region),
            ("access_key_id", access_key_id),
            ("secret_access_key", secret_access_key),
            ("token", session_token),
        ):
            if value:
                config[name] = value
        allow_http = bool(endpoint_url and endpoint_url.startswith("http://"))
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            client_options={"allow_http": allow_http},
            **config,
        )
        self._clock = clock
        self._stale_after = stale_after

    # ---- ResultStore ----

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
        now = require_aware(self._clock(), "clock()")
        key = result_key(tenant_id, request_id)
        manifest = Manifest.build(
            tenant_id,
            request_id,
            response,
            images,
            created_at=now,
            expires_at=expires_at,
            location=uuid.uuid4().hex,
        )
        parts = _part_paths(key, manifest)
        await asyncio.gather(
            *(
                obstore.put_async(self._store, path, bytes(data))
                for path, data in zip(parts, [response, *images], strict=True)
            )
        )
        body = manifest.encode()
        manifest_path = f"{key}/{MANIFEST}"
        for _ in range(_PUBLISH_TRIES):
            try:
                await obstore.put_async(self._store, manifest_path, body, mode="create")
                return
            except AlreadyExistsError:
                pass
            found = await self._read_manifest(key)
            if found is None:  # swept in between: create again
                continue
            current, e_tag = found
            if current.expired(now):
                try:
                    await obstore.put_async(self._store, manifest_path, body, mode={"e_tag": e_tag})
                except (PreconditionError, *_MISSING):
                    continue
                await self._delete_parts(key, current)
                return
            if not current.same_content(manifest):
                log.warning(
                    "result of request %r (tenant %r) is stored already with other content;"
                    " keeping the first",
                    request_id,
                    tenant_id,
                )
            await self._delete_parts(key, manifest)
            return
        raise RuntimeError(f"could not publish the result of {request_id!r}: kept racing")

    async def get(self, tenant_id: str, request_id: str) -> StoredResult | None:
        """See `ResultStore.get`."""
        key = result_key(tenant_id, request_id)
        found = await self._read_manifest(key)
        if found is None:
            return None
        manifest, _ = found
        if not manifest.belongs_to(tenant_id, request_id):
            raise ResultCorruptedError(f"{key} holds the result of another request")
        if manifest.expired(require_aware(self._clock(), "clock()")):
            return None
        try:
            blobs = await asyncio.gather(*(self._read(path) for path in _part_paths(key, manifest)))
        except _MISSING:
            return None  # swept while we read
        return manifest.result(blobs[0], blobs[1:])

    async def sweep(self, now: datetime) -> int:
        """See `ResultStore.sweep`."""
        now = require_aware(now, "now")
        by_key: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        async for batch in obstore.list(self._store, chunk_size=1000):
            for meta in batch:
                key, _, rest = meta["path"].partition("/")
                by_key[key].append((rest, meta["last_modified"]))
        removed = 0
        stale = now - self._stale_after
        for key, objects in by_key.items():
            live: set[str] = set()
            if any(rest == MANIFEST for rest, _ in objects):
                found = await self._read_manifest(key)
                if found is not None:
                    manifest, _ = found
                    if manifest.expired(now):
                        if await self._delete_manifest(key):
                            removed += 1
                        await self._delete_parts(key, manifest)
                    else:
                        live = set(_part_paths(key, manifest))
            orphans = [
                f"{key}/{rest}"
                for rest, modified in objects
                if rest != MANIFEST and f"{key}/{rest}" not in live and modified < stale
            ]
            if orphans:
                await obstore.delete_async(self._store, orphans)
        return removed

    async def close(self) -> None:
        """Nothing to release: obstore's client closes with the store object."""

    # ---- helpers ----

    async def _read(self, path: str) -> bytes:
        got = await obstore.get_async(self._store, path)
        return bytes(await got.bytes_async())

    async def _read_manifest(self, key: str) -> tuple[Manifest, str | None] | None:
        try:
            got = await obstore.get_async(self._store, f"{key}/{MANIFEST}")
        except _MISSING:
            return None
        raw = bytes(await got.bytes_async())
        return Manifest.decode(raw), got.meta["e_tag"]

    async def _delete_manifest(self, key: str) -> bool:
        """Deletes an expired manifest. S3 has no conditional delete: a put that replaces the
        expired manifest between sweep's read and this delete loses its result (get then
        answers None, as for any absent result)."""
        try:
            await obstore.delete_async(self._store, f"{key}/{MANIFEST}")
        except _MISSING:
            return False
        return True

    async def _delete_parts(self, key: str, manifest: Manifest) -> None:
        """Deletes the parts a manifest points at (after losing a race, or replacing it)."""
        with contextlib.suppress(*_MISSING):
            await obstore.delete_async(self._store, _part_paths(key, manifest))


def _part_paths(key: str, manifest: Manifest) -> list[str]:
    """Paths of the response and the images of a manifest, in that order."""
    folder = f"{key}/{manifest.location}"
    return [f"{folder}/response", *(f"{folder}/{n}" for n in range(len(manifest.images)))]
