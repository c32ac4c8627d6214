"""Datasets and trained models as rows; job heartbeats and progress detail.

A running job's worker refreshes `heartbeat_at`; a job whose heartbeat is older than the lease
lost its worker and is queued again (training resumes from its last checkpoint). `progress_detail`
holds what a long job reports while it runs (step, loss, bytes ...).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _made_by() -> sa.Column:
    return sa.Column("job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("progress_detail", postgresql.JSONB(), nullable=True))
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("tasks", postgresql.JSONB(), nullable=False),
        sa.Column("splits", postgresql.JSONB(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        _made_by(),
        _created_at(),
    )
    op.create_table(
        "trained_models",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("family", sa.String(16), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("base_model", sa.String(500), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("metrics", postgresql.JSONB(), nullable=False),
        _made_by(),
        _created_at(),
    )


def downgrade() -> None:
    op.drop_table("trained_models")
    op.drop_table("datasets")
    op.drop_column("jobs", "progress_detail")
    op.drop_column("jobs", "heartbeat_at")
