"""results_store_from_url: the store a configuration string names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from imagegate.results.disk import DiskResultStore
from imagegate.results.model import ResultStore
from imagegate.results.s3 import S3ResultStore


def results_store_from_url(url: str) -> ResultStore:
    """The store of `url`:

    - `file:///var/lib/imagegate/results` or a plain path: DiskResultStore at that folder;
    - `s3://bucket/prefix?endpoint=http://host:9000&region=eu-west-1`: S3ResultStore, with the
      endpoint and region optional and credentials from the standard AWS environment variables.

    ValueError for any other scheme, a file URL naming a host, or an s3 URL without a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme == "":
        return DiskResultStore(Path(url))
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL with a remote host is not supported: {url!r}")
        return DiskResultStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"s3 URL without a bucket: {url!r}")
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ValueError(f"unknown s3 URL parameters {sorted(unknown)} in {url!r}")
        return S3ResultStore(
            parts.netloc,
            unquote(parts.path).strip("/"),
            query.get("endpoint"),
            region=query.get("region"),
        )
    raise ValueError(f"unsupported results store URL {url!r}: use file://, a path or s3://")
