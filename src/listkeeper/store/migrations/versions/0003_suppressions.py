"""Suppressions added at run time (the manifests' SuppressionList adds to these).

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
    op.create_table(
        "suppressions",
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
