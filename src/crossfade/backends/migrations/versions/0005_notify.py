"""The notification outbox: one row per event and target, delivered at least once; a cursor per migration.

Revision ID: 0005_notify
Revises: 0003_security
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_notify"
down_revision = "0003_security"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "crossfade_notifications",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.Text(), nullable=False, unique=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.Column("last_attempt_at", sa.Double()),
        sa.Column("delivered_at", sa.Double()),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index("ix_notifications_due", "crossfade_notifications", ["status", "next_at"])
    op.create_index("ix_notifications_migration", "crossfade_notifications", ["migration", "id"])
    op.create_table(
        "crossfade_notify_cursors",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
    )
    # Migrations that exist already start their cursor at their last event: the outbox tells of what happens
    # from now on, not of a history no one was notified of (a spec's `notify:` was not read before).
    op.execute(
        "INSERT INTO crossfade_notify_cursors (migration, seq, spec_version) "
        "SELECT s.migration, s.seq, COALESCE((SELECT MAX(p.version) FROM crossfade_specs p "
        "WHERE p.migration = s.migration), 0) FROM crossfade_states s"
    )


def downgrade() -> None:
    op.drop_table("crossfade_notify_cursors")
    op.drop_table("crossfade_notifications")
