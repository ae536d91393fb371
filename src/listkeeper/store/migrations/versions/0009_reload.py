"""Hot reload: the history of configuration changes (applied and rejected) and the engine nodes
running on this store, with the generation each serves: what `listkeeper status` shows.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("paths", sa.Text, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("changes", sa.Text, nullable=False),
        sa.Column("errors", sa.Text, nullable=False),
    )
    op.create_index("ix_config_history_outcome", "config_history", ["outcome", "id"])
    op.create_table(
        "engine_nodes",
        sa.Column("node", sa.String(253), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("loaded_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float, nullable=True),
        sa.Column("listening", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("engine_nodes")
    op.drop_index("ix_config_history_outcome", "config_history")
    op.drop_table("config_history")
