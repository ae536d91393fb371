"""Subscribers become runtime data (roles, delivery mode, state, bounce score), with the tables that
issue 7's member-facing features keep: the subscription log, confirmations, moderation holds,
autoresponse counts, bounces, pending digest posts and refused inbound mail.

Revision ID: 0005
Revises: 0004
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("name", sa.Text, nullable=True))
        batch.add_column(sa.Column("roles", sa.String(100), nullable=False, server_default="regular"))
        batch.add_column(sa.Column("receives", sa.String(8), nullable=False, server_default="post"))
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("bounce_score", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("bounce_last_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_subscribers_receives", "subscribers", ["list_name", "receives", "state"])
    # rows written before 0005 held only regular and digest members of the manifests: give them their roles
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT name, spec FROM resources WHERE kind = 'MailingList' AND deleted_at IS NULL"))
    for name, spec in rows:
        for sub in json.loads(spec).get("subscribers", []):
            roles = sorted(set(sub.get("roles") or ["regular"]))
            receives = "post" if "regular" in roles else "digest" if "digest" in roles else ""
            conn.execute(sa.text("UPDATE subscribers SET roles = :roles, receives = :receives, name = :n "
                                 "WHERE list_name = :list AND address = :address"),
                         dict(roles=",".join(roles), receives=receives, n=sub.get("name"), list=name,
                              address=sub["address"]))
    op.create_table(
        "subscription_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("list_name", sa.String(253), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_subscription_changes_at", "subscription_changes", ["at"])
    op.create_table(
        "confirmations",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("list_name", sa.String(253), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True),
    )
    op.create_table(
        "holds",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("list_name", sa.String(253), nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("decided_by", sa.Text, nullable=True),
    )
    op.create_index("ix_holds_list", "holds", ["list_name", "decided_at"])
    op.create_table(
        "autoresponses",
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("list_name", sa.String(253), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("counted", sa.Integer, nullable=False),
        sa.Column("message_id", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_bounces_list", "bounces", ["list_name", "address"])
    op.create_table(
        "digest_pending",
        sa.Column("list_name", sa.String(253), primary_key=True),
        sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("peer", sa.Text, nullable=True),
        sa.Column("mail_from", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
    )
    op.create_index("ix_refusals_at", "refusals", ["at"])


def downgrade() -> None:
    for table in ("refusals", "digest_pending", "bounces", "autoresponses", "holds", "confirmations",
                  "subscription_changes"):
        op.drop_table(table)
    op.drop_index("ix_subscribers_receives", "subscribers")
    with op.batch_alter_table("subscribers") as batch:
        for column in ("updated_at", "bounce_last_at", "bounce_score", "state", "receives", "roles", "name"):
            batch.drop_column(column)
