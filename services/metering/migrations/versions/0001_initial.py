"""Initial Metering schema: usage_records and usage_attempts."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("occurred_us", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("provider_model", sa.String(255), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("pixels", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_usage_records_tenant_request"),
    )
    op.create_index(
        "ix_usage_records_tenant_period_time",
        "usage_records",
        ["tenant_id", "period", "occurred_us", "id"],
    )
    op.create_table(
        "usage_attempts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("record_id", _ID, sa.ForeignKey("usage_records.id"), nullable=False),
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("provider_model", sa.String(255), nullable=False),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("pixels", sa.BigInteger, nullable=False),
        sa.Column("provider_seconds", sa.Float, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("provider_job_id", sa.String(255), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("price_id", sa.String(300), nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("record_id", "attempt_number", name="uq_usage_attempts_record_attempt"),
    )
    op.create_index("ix_usage_attempts_tenant_period", "usage_attempts", ["tenant_id", "period"])


def downgrade() -> None:
    op.drop_table("usage_attempts")
    op.drop_table("usage_records")
