"""Per-stage running totals of telemetry, so that the first look at a long stage reads hours, not every row.

A roll-up adds the rows of a stage's windows that ended long enough ago (past what triggers look back over)
into one total per hour and arm of the stage's stay, and marks those rows with its generation in the same
transaction: a reader takes the totals plus the rows not yet rolled, in one snapshot. Rows stay as written
(whole reads, history and compaction keep working); the partial index finds the unrolled ones.

Revision ID: 0009_stage_totals
Revises: 0008_telemetry_reads
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_stage_totals"
down_revision = "0008_telemetry_reads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0: not rolled up; n: added into the stage's totals by its n-th roll-up.
    rolled = sa.Column("rolled", sa.BigInteger(), nullable=False, server_default="0")
    if op.get_bind().dialect.name == "sqlite":
        # Without AUTOINCREMENT SQLite hands out the highest id again once its row is deleted (compaction
        # deletes the later rows of a window), and a reader that read up to it would miss the new row.
        with op.batch_alter_table("crossfade_telemetry", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.add_column(rolled)
    else:
        op.add_column("crossfade_telemetry", rolled)
    op.create_index("ix_telemetry_unrolled", "crossfade_telemetry", ["migration", "stage", "id"],
                    sqlite_where=sa.text("rolled = 0"), postgresql_where=sa.text("rolled = 0"))
    op.create_table(
        "crossfade_stage_totals",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("stage", sa.Text(), primary_key=True),
        sa.Column("entered", sa.Double(), primary_key=True),  # the stay: a stage entered again starts afresh
        sa.Column("arm", sa.Text(), primary_key=True),
        sa.Column("hour", sa.Double(), primary_key=True),
        sa.Column("window_end", sa.Double(), nullable=False),
        sa.Column("cell", sa.Text(), nullable=False),
    )
    op.create_table(
        "crossfade_rollups",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("stage", sa.Text(), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        # Every row with an id up to `settled_id` was committed when the last roll-up ran; `pending_id` becomes
        # settled once SETTLE seconds (by the database's clock) have passed since `pending_at`.
        sa.Column("settled_id", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.BigInteger(), nullable=False),
        sa.Column("pending_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("crossfade_rollups")
    op.drop_table("crossfade_stage_totals")
    op.drop_index("ix_telemetry_unrolled", table_name="crossfade_telemetry")
    op.drop_column("crossfade_telemetry", "rolled")
