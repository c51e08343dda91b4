"""Per-window totals of a stage's newest telemetry, so that a first look reads one row a window and arm, not one
a process.

Hours are rolled up only once no trigger or change detector reads their windows as written, so a first look at
a stage used to read the newest hour row by row (100 processes: 72,000 rows). A roll-up now also adds the rows
of the windows that ended since into one total per window and arm of the stay (what every judge sees anyway,
cells adding up exactly), marking the rows as it marks those it adds into hours; those totals move into the
hours once their windows are old enough.

Revision ID: 0010_window_totals
Revises: 0009_stage_totals
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_window_totals"
down_revision = "0009_stage_totals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crossfade_window_totals",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("stage", sa.Text(), primary_key=True),
        sa.Column("entered", sa.Double(), primary_key=True),  # the stay, as in crossfade_stage_totals
        sa.Column("arm", sa.Text(), primary_key=True),
        sa.Column("window_start", sa.Double(), primary_key=True),
        sa.Column("window_length", sa.Double(), primary_key=True),
        sa.Column("cell", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("crossfade_window_totals")
