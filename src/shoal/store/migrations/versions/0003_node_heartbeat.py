"""A Node's last heartbeat as a column, so the node-lifecycle loop reads only silent nodes.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Left empty for existing nodes: a node without it counts as silent until its next heartbeat.
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("heartbeat", sa.Float, nullable=True))
        batch.create_index("ix_objects_kind_heartbeat", ["kind", "heartbeat"])


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_index("ix_objects_kind_heartbeat")
        batch.drop_column("heartbeat")
