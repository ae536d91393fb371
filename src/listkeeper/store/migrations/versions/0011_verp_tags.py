"""Signed VERP tags: a report to a list's plain bounce address counts only for who was sent a notice
with that return path lately, so those deliveries (and only those: list copies carry VERP return paths)
are looked up by return path.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PLAIN = sa.text("return_path NOT LIKE '%+%'")


def upgrade() -> None:
    op.create_index("ix_deliveries_plain_return_path", "deliveries", ["return_path", "recipient"],
                    sqlite_where=PLAIN, postgresql_where=PLAIN)


def downgrade() -> None:
    op.drop_index("ix_deliveries_plain_return_path", "deliveries")
