"""Shadow comparisons: per field path counts by window, and the newest mismatch examples.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COUNTERS = (
    "compared", "differing", "noise_compared", "noise_differing",
    "dropped", "timeouts", "errors", "refused", "dual_writes", "divergent",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "crossfade_shadow_fields",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("window_start", sa.Double(), nullable=False),
        sa.Column("window_length", sa.Double(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in _COUNTERS),
        sa.Column("written_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_shadow_fields_stage", "crossfade_shadow_fields", ["migration", "stage", "window_start"])
    op.create_table(
        "crossfade_shadow_examples",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("migration", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_shadow_examples_path", "crossfade_shadow_examples", ["migration", "path", "id"])


def downgrade() -> None:
    op.drop_table("crossfade_shadow_examples")
    op.drop_table("crossfade_shadow_fields")
