"""Several engine nodes on one store: each delivery being sent names the node that claimed it, so a
node starting again releases only its own leases (and expired ones), never another live node's.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(253), nullable=True))
    if op.get_bind().dialect.name == "postgresql":  # a claim's rows, in the order it takes them
        op.create_index("ix_deliveries_claimable", "deliveries", ["next_attempt_at", "id"],
                        postgresql_where=sa.text("state IN ('queued', 'deferred')"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_deliveries_claimable", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("claimed_by")
