"""Initial schema: counters, objects, changes, tokens.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger)),
        [{"name": "rv", "value": 0}, {"name": "compacted", "value": 0}],
    )
    op.create_table(
        "objects",
        sa.Column("kind", sa.String(63), primary_key=True),
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("rv", sa.BigInteger, nullable=False),
        sa.Column("node_name", sa.String(63), nullable=True),
        sa.Column("req_cpu", sa.Integer, nullable=False),
        sa.Column("req_memory", sa.BigInteger, nullable=False),
        sa.Column("req_disk", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_objects_kind_node", "objects", ["kind", "node_name"])
    op.create_table(
        "changes",
        sa.Column("rv", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(63), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("subject_kind", sa.String(32), nullable=False),
        sa.Column("subject_namespace", sa.String(63), nullable=False),
        sa.Column("subject_name", sa.String(253), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_tokens_subject", "tokens", ["subject_kind", "subject_namespace", "subject_name"]
    )


def downgrade() -> None:
    op.drop_table("tokens")
    op.drop_table("changes")
    op.drop_index("ix_objects_kind_node", "objects")
    op.drop_table("objects")
    op.drop_table("counters")
