"""A real PostgreSQL for tests: testcontainers when a Docker engine answers, else a throwaway
cluster from the server binaries in /usr/lib/postgresql/*/bin; never skipped."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest


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


def _docker_answers() -> bool:
    if not shutil.which("docker") and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        raise RuntimeError(
            "no Docker engine and no PostgreSQL server binaries: `make postgres-bin` installs them"
        )
    return Path(candidates[-1]).parent


class _LocalCluster:
    """initdb + pg_ctl in a temp dir, run as the `postgres` user when we are root."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="imagegate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
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
        return PostgresServer("127.0.0.1", self.port, "postgres", "")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(*, durable: bool = True) -> Iterator[PostgresServer]:
    """A throwaway cluster for benchmarks; durable=True keeps fsync and synchronous_commit on
    (the settings of ../shared/reference/reliability.md section 1.4)."""
    cluster = _LocalCluster(durable=durable)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_lock = threading.Lock()
_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The one PostgreSQL server of this test process, started on first use, stopped at exit."""
    global _server
    with _lock:
        if _server is not None:
            return _server
        if _docker_answers():
            from testcontainers.postgres import PostgresContainer

            container = PostgresContainer("postgres:16-alpine")
            container.start()
            atexit.register(container.stop)
            _server = PostgresServer(
                container.get_container_host_ip(),
                int(container.get_exposed_port(5432)),
                container.username,
                container.password,
            )
        else:
            cluster = _LocalCluster()
            try:
                _server = cluster.start()
            except Exception:
                cluster.stop()
                raise
            atexit.register(cluster.stop)
        return _server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The shared PostgreSQL server."""
    return shared_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database on the shared server."""
    yield postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
