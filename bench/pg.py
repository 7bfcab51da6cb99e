"""A throwaway PostgreSQL cluster with production durability (fsync and synchronous_commit on)."""

from __future__ import annotations

import asyncio

from tests.fixtures.postgres import LocalCluster, bin_dir


async def start_cluster() -> LocalCluster | None:
    """A running durable cluster, or None when the server binaries are missing."""
    try:
        bin_dir()
    except RuntimeError:
        return None
    cluster = LocalCluster(durable=True)
    try:
        await asyncio.to_thread(cluster.start)
    except BaseException:
        cluster.stop()
        raise
    return cluster
