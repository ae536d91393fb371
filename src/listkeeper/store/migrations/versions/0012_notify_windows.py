"""max_frequency's windows in the store: one run per window across the engine nodes and their restarts.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notify_windows",
        sa.Column("rule", sa.String(253), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("every", sa.Float, nullable=False),
        sa.Column("held_back", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("since", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("rule", "key", name="notify_windows_pkey"),
    )


def downgrade() -> None:
    op.drop_table("notify_windows")
