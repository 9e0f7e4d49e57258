"""A VM's guest OS as a column, so a node's macOS guests are counted in SQL.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("guest_os", sa.String(16), nullable=True))
    op.execute(
        "UPDATE objects SET guest_os = 'macos' "
        "WHERE kind = 'VirtualMachine' AND body LIKE '%\"os\":\"macos\"%'"
    )


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("guest_os")
