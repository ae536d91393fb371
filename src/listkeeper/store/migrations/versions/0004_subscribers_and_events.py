"""Subscribers as runtime rows (for set-based event evaluation), event counters and the fire log.

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
        "subscribers",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("joined_at", sa.Float, nullable=False),
    )
    op.create_table(
        "event_counters",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("event", sa.String(63), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_table(
        "event_fires",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("list_name", sa.String(253), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("event", sa.String(63), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_event_fires_list", "event_fires", ["list_name", "event"])


def downgrade() -> None:
    op.drop_table("event_fires")
    op.drop_table("event_counters")
    op.drop_table("subscribers")
