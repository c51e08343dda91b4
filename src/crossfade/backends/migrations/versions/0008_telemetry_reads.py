"""An index for the incremental reads of a stage's telemetry: (migration, stage, id).

Every look reads the rows of one migration's stage with an id above the last one read, in id order, in pages.
Without this index PostgreSQL sorts every row of the stage for each page (a day of a hundred hosts is millions
of rows: past the statement timeout).

Revision ID: 0008_telemetry_reads
Revises: 0005_notify
Create Date: 2026-12-02
"""

from alembic import op

revision = "0008_telemetry_reads"
down_revision = "0005_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_telemetry_stage_id", "crossfade_telemetry", ["migration", "stage", "id"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_stage_id", table_name="crossfade_telemetry")
