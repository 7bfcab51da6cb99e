"""API keys remember their last use (to within Quota's flush interval) for `admin key-list`."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "last_used_us")
