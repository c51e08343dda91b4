"""Batch migrations: content-addressed snapshots of items and each item's progress through a batch.

Revision ID: 0007_batch
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_batch"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per distinct content: the same bytes snapshotted by many items or many batches are stored once.
    op.create_table(
        "crossfade_blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "crossfade_batch_items",
        sa.Column("migration", sa.Text(), primary_key=True),
        sa.Column("key", sa.Text(), primary_key=True),
        # Where the new content went when the batch writes to another key or store (None: the same key).
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("existed", sa.Boolean(), nullable=False),
        sa.Column("before", sa.String(64), nullable=True),
        sa.Column("after", sa.String(64), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_batch_items_status", "crossfade_batch_items", ["migration", "status"])
    op.create_index("ix_batch_items_updated", "crossfade_batch_items", ["updated_at"])


def downgrade() -> None:
    op.drop_table("crossfade_batch_items")
    op.drop_table("crossfade_blobs")
