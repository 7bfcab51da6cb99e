"""Throwaway PostgreSQL servers for tests and benchmarks: initdb + pg_ctl, no Docker needed."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from imagegate.devstack.services import free_port


@dataclass
class PostgresServer:
    """A running server reachable as the superuser over loopback TCP."""

    host: str
    """Host to connect to."""
    port: int
    """TCP port."""
    user: str
    """Superuser name."""
    password: str
    """Password ("" with trust authentication)."""

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of one database."""
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        conninfo = f"host={self.host} port={self.port} user={self.user} dbname=postgres"
        if self.password:
            conninfo += f" password={self.password}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)


def docker_answers() -> bool:
    if not shutil.which("docker") and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def bin_dir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        raise RuntimeError(
            "no Docker engine and no PostgreSQL server binaries: `make postgres-bin` installs them"
        )
    return Path(candidates[-1]).parent


class LocalCluster:
    """initdb + pg_ctl in a temp dir, run as the `postgres` user when we are root."""

    server: PostgresServer

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="imagegate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root; hand the directory to the postgres user.
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

    def start(self) -> PostgresServer:
        """Creates and starts the cluster; blocks until it accepts connections."""
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300 -c shared_buffers=64MB"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
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
        self.server = PostgresServer("127.0.0.1", self.port, "postgres", "")
        return self.server

    def create_database(self) -> str:
        """A fresh empty database on the started cluster; returns its URL."""
        return self.server.create_database()

    def stop(self) -> None:
        """Stops the server at once and removes its files."""
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(*, durable: bool = True) -> Iterator[PostgresServer]:
    """A throwaway cluster for benchmarks; durable=True keeps fsync and synchronous_commit on
    (the settings of ../shared/reference/reliability.md section 1.4)."""
    cluster = LocalCluster(durable=durable)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
