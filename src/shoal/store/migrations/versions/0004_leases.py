"""Leases: controller leadership (with its epoch, the fencing token) and replica presence.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),  # seconds, on the database's clock
        sa.Column("address", sa.String(256), nullable=False),
    )
    # The leader lease exists from the start: taking it is always an update under a row lock.
    op.bulk_insert(
        sa.table(
            "leases",
            sa.column("name", sa.String),
            sa.column("holder", sa.String),
            sa.column("epoch", sa.BigInteger),
            sa.column("expires", sa.Float),
            sa.column("address", sa.String),
        ),
        [{"name": "leader", "holder": "", "epoch": 0, "expires": 0.0, "address": ""}],
    )


def downgrade() -> None:
    op.drop_table("leases")
