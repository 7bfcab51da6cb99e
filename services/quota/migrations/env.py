"""Alembic environment: runs on the connection handed over by db.migrate()."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    version_table=config.get_main_option("version_table") or "alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
