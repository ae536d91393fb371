"""An index on messages.parent_id: retention removes messages, and each one removed is looked for among
the messages made from it (the foreign key); without the index that is a scan of every message.

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_parent", "messages", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_parent", table_name="messages")
