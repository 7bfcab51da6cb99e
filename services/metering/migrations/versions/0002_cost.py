"""Cost truth: tenant charge, failed-attempt cost and plan per record; reported usage and line kind per attempt.

Rows written before this migration keep 0 / "" / true: their cost_micros was the provider cost,
and their tenant charge was never recorded here (Quota holds it).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_cost"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("tenant_charge_micros", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("failed_cost_micros", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("plan", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("usage_attempts") as batch:
        batch.add_column(
            sa.Column("usage_reported", sa.Boolean, nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("kind", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_usage_records_period_plan", "usage_records", ["period", "plan"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_period_plan", table_name="usage_records")
    with op.batch_alter_table("usage_attempts") as batch:
        batch.drop_column("kind")
        batch.drop_column("usage_reported")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("plan")
        batch.drop_column("failed_cost_micros")
        batch.drop_column("tenant_charge_micros")
