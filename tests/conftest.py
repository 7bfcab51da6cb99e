"""Shared test fixtures for the cross-service suites."""

from tests.pg import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]
