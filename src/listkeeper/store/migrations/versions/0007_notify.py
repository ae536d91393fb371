"""Reports: each report's last run (its next period starts there); event fires found by time.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "report_runs",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("last_run_at", sa.Float, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
    )
    op.create_index("ix_event_fires_at", "event_fires", ["at"])


def downgrade() -> None:
    op.drop_index("ix_event_fires_at", "event_fires")
    op.drop_table("report_runs")
