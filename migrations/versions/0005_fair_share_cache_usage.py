"""Fair share across tenants, priorities, the result cache, usage per tenant, workers of trained models.

- `tenants`: a tenant's weight in the fair share of a queue (default 1 where no row exists).
- `queue_clocks` / `queue_shares`: start-time fair queuing state, per queue its virtual time and
  per (queue, tenant) the virtual time at which the tenant's next job starts (jobs/fair_share.py).
- `jobs.priority` (`interactive` | `batch`; existing rows are interactive), with a partial index that
  lets a claim find each tenant's first queued job of a queue.
- `jobs.cached` and `jobs.cache_key` (what a job's result answers; indexed over succeeded jobs).
- `jobs.worker_seconds`: the model time a job took, recorded with its terminal transition; indexed
  for usage by tenant and time.
- `worker_presence`: which queues a live worker serves, refreshed with a TTL (workers of trained models).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("weight > 0", name="ck_tenants_weight_positive"),
    )
    op.create_table(
        "queue_clocks",
        sa.Column("queue", sa.String(600), primary_key=True),
        sa.Column("virtual_time", sa.Float(), nullable=False),
    )
    op.create_table(
        "queue_shares",
        sa.Column("queue", sa.String(600), primary_key=True),
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("virtual_finish", sa.Float(), nullable=False),
    )
    op.create_table(
        "worker_presence",
        sa.Column("queue", sa.String(600), primary_key=True),
        sa.Column("worker", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Existing jobs were all interactive; new rows always name their priority, so the default goes again.
    op.add_column("jobs", sa.Column("priority", sa.String(16), nullable=False, server_default="interactive"))
    op.alter_column("jobs", "priority", server_default=None)
    op.add_column("jobs", sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.alter_column("jobs", "cached", server_default=None)
    op.add_column("jobs", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("worker_seconds", sa.Float(), nullable=True))
    op.create_index(
        "ix_jobs_queued_tenant",
        "jobs",
        ["queue", "tenant", "created_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index("ix_jobs_cache_key", "jobs", ["cache_key"], postgresql_where=sa.text("status = 'succeeded'"))
    op.create_index("ix_jobs_tenant_finished_at", "jobs", ["tenant", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_finished_at", "jobs")
    op.drop_index("ix_jobs_cache_key", "jobs")
    op.drop_index("ix_jobs_queued_tenant", "jobs")
    for column in ("worker_seconds", "cache_key", "cached", "priority"):
        op.drop_column("jobs", column)
    for table in ("worker_presence", "queue_shares", "queue_clocks", "tenants"):
        op.drop_table(table)
