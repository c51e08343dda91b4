"""The first schema: specs, hash-chained events, state snapshots, telemetry windows, tokens and leases.

Every table is prefixed `crossfade_`, so the schema can live in an application's own database.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A migration is a frozen snapshot of the schema: it spells its tables out instead of importing them.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


def upgrade() -> None:
    op.create_table(
        "crossfade_specs",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "crossfade_events",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "crossfade_states",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
    )
    op.create_table(
        "crossfade_telemetry",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("arm", sa.Text(), nullable=False),
        sa.Column("window_start", sa.Double(), nullable=False),
        sa.Column("window_length", sa.Double(), nullable=False),
        sa.Column("cell", sa.Text(), nullable=False),
        sa.Column("written_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_telemetry_window", "crossfade_telemetry", ["migration", "stage", "window_start"])
    op.create_table(
        "crossfade_tokens",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
    )
    op.create_table(
        "crossfade_leases",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    for table in ("crossfade_leases", "crossfade_tokens", "crossfade_telemetry", "crossfade_states", "crossfade_events", "crossfade_specs"):
        op.drop_table(table)
