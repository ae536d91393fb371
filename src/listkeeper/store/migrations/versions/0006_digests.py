"""Digests and the archive: the digests sent (their numbering), posts waiting to be archived, and each
list's archive progress. Archives begin with the posts accepted after this upgrade.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digests",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("volume", sa.Integer, primary_key=True),
        sa.Column("issue", sa.Integer, primary_key=True),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("posts", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("sent_at", sa.Float, nullable=False),
    )
    op.create_index("ix_digests_sent", "digests", ["list_name", "sent_at"])
    op.create_table(
        "archive_pending",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "archives",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("archived", sa.Integer, nullable=False),
        sa.Column("mbox_size", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("archives", "archive_pending", "digests"):
        op.drop_table(table)
