"""Fixtures of the cost tests: the PostgreSQL helpers shared with the ledger tests."""

from __future__ import annotations

from tests.pg import database_url, postgres_server, postgres_url

__all__ = ["database_url", "postgres_server", "postgres_url"]
