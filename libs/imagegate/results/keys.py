"""The storage key of a (tenant_id, request_id) pair.

Request ids are caller-chosen text ("a/../b", unicode, very long): never a path. The key is a
SHA-256 over both parts, each length-prefixed so that no two pairs share an encoding.
"""

from __future__ import annotations

import hashlib

_DOMAIN = b"imagegate.results.v1\0"


def result_key(tenant_id: str, request_id: str) -> str:
    """64 lowercase hex digits naming the result of `request_id` in `tenant_id`."""
    digest = hashlib.sha256(_DOMAIN)
    for part in (tenant_id, request_id):
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return digest.hexdigest()


def shard(key: str) -> str:
    """The two-character folder a key lives in, so no folder grows past 1/256 of the store."""
    return key[:2]
