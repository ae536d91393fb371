"""Applied resources keep what git last applied (for drift), their annotations, and a soft-delete time.

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
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("last_applied", sa.Text, nullable=True))
        batch.add_column(sa.Column("annotations", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("deleted_at", sa.Float, nullable=True))
    op.execute("UPDATE resources SET last_applied = spec WHERE last_applied IS NULL")
    meta = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))
    bind = op.get_bind()
    if bind.execute(sa.select(meta.c.key).where(meta.c.key == "generation")).first() is None:
        op.bulk_insert(meta, [{"key": "generation", "value": "0"}])


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("annotations")
        batch.drop_column("last_applied")
