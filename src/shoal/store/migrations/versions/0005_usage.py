"""Usage: what each VM held (node, cpu, memory) and when, for `shoal usage`.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("memory", sa.BigInteger, nullable=False),
        sa.Column("started", sa.Float, nullable=False),  # seconds, on the database's clock
        sa.Column("ended", sa.Float, nullable=True),  # None while it holds them
    )
    op.create_index("ix_usage_uid_ended", "usage", ["uid", "ended"])
    op.create_index("ix_usage_started", "usage", ["started"])


def downgrade() -> None:
    op.drop_table("usage")
