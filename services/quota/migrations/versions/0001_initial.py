"""Initial Quota schema: tenants, api_keys, quota_periods, reservations."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("plan", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True, unique=True),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("revoke_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "quota_periods",
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("used_images", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_images", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_pixels", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_pixels", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used_cost_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_cost_micros", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("images", sa.BigInteger, nullable=False),
        sa.Column("pixels", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("expire_us", sa.BigInteger, nullable=False),
        sa.Column("settle_us", sa.BigInteger, nullable=True),
        sa.Column("charged_images", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("charged_pixels", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("charged_cost_micros", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_reservations_tenant_request"),
    )
    op.create_index("ix_reservations_state_expire", "reservations", ["state", "expire_us"])


def downgrade() -> None:
    op.drop_table("reservations")
    op.drop_table("quota_periods")
    op.drop_index("ix_api_keys_tenant_id", "api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
