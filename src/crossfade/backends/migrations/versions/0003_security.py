"""Telemetry rows carry their sender's idempotency key; tokens may be bound to the migrations they serve.

A window is stored once per key (process, window, part), so a write retried after its answer was lost adds
nothing; rows written before this revision have no key and stay as they are (NULLs never collide).

Revision ID: 0003_security
Revises: 0007_batch
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_security"
down_revision = "0007_batch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("crossfade_telemetry") as batch:
        batch.add_column(sa.Column("source", sa.Text(), nullable=True))
    op.create_index("ux_telemetry_source", "crossfade_telemetry",
                    ["migration", "stage", "arm", "window_start", "source"], unique=True)
    with op.batch_alter_table("crossfade_tokens") as batch:
        batch.add_column(sa.Column("migrations", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crossfade_tokens") as batch:
        batch.drop_column("migrations")
    op.drop_index("ux_telemetry_source", "crossfade_telemetry")
    with op.batch_alter_table("crossfade_telemetry") as batch:
        batch.drop_column("source")
