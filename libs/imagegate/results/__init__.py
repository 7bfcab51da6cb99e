"""Durable results of finished requests, shared by Router replicas so that any replica (and a
restarted one) can replay a request another one finished.

    store = results_store_from_url("file:///var/lib/imagegate/results")   # or s3://bucket/prefix
    await store.put(tenant_id, request_id, response, images, expires_at=expires_at)
    stored = await store.get(tenant_id, request_id)    # StoredResult, or None: absent or expired
    removed = await store.sweep(datetime.now(UTC))
    await store.close()

Modules, one job each: `model` (StoredResult and the ResultStore protocol), `keys` (the storage
key of a (tenant, request_id) pair), `manifest` (what a stored result says about itself),
`disk` (DiskResultStore, the embedded default), `s3` (S3ResultStore over obstore) and `url`
(results_store_from_url).
"""

from imagegate.results.disk import DiskResultStore
from imagegate.results.model import ResultCorruptedError, ResultStore, StoredResult
from imagegate.results.s3 import S3ResultStore
from imagegate.results.url import results_store_from_url

__all__ = [
    "DiskResultStore",
    "ResultCorruptedError",
    "ResultStore",
    "S3ResultStore",
    "StoredResult",
    "results_store_from_url",
]
