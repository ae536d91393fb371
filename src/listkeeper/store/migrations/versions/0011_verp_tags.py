"""Signed VERP tags: a bounce whose return path carries no valid tag counts only if a delivery was sent
with that very return path lately, so deliveries are looked up by return path.

Revision ID: 0011
Revises: 0010
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_return_path", "deliveries", ["return_path"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_return_path", "deliveries")
