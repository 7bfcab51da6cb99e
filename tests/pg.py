"""A real PostgreSQL for tests: testcontainers when a Docker engine answers, else a throwaway
cluster from the server binaries in /usr/lib/postgresql/*/bin; never skipped."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.postgres import (
    LocalCluster,
    PostgresServer,
    docker_answers,
    local_cluster,
)

__all__ = ["PostgresServer", "local_cluster"]


_lock = threading.Lock()
_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The one PostgreSQL server of this test process, started on first use, stopped at exit."""
    global _server
    with _lock:
        if _server is not None:
            return _server
        if docker_answers():
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
            cluster = LocalCluster()
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
