"""A throwaway PostgreSQL cluster with production durability (fsync and synchronous_commit on)."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from imagegate.devstack.services import free_port


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<v>/bin holding initdb, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parents[1].name)
    )
    return Path(found[-1]).parent if found else None


class Cluster:
    """initdb + pg_ctl in a temp folder, as the `postgres` OS user when we run as root.

    Unlike tests/pg.py (fsync off for speed), this keeps the server's durable defaults so the
    figures mean what they would in a deployment.
    """

    def __init__(self, bindir: Path) -> None:
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="imagegate-bench-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            os.chmod(self.root, 0o700)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, *args],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    def start(self) -> None:
        """Creates and starts the cluster (blocking)."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def create_database(self) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        name = "bench_" + uuid.uuid4().hex[:12]
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stops the server and removes its files."""
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


async def start_cluster() -> Cluster | None:
    """A running cluster, or None when the server binaries are missing."""
    bindir = bin_dir()
    if bindir is None:
        return None
    cluster = Cluster(bindir)
    try:
        await asyncio.to_thread(cluster.start)
    except BaseException:
        cluster.stop()
        raise
    return cluster
