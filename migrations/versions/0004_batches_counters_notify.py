"""Batches, a per-tenant counter of unfinished jobs, and a notification on every change of a job.

- `jobs.batch_key` (which queued jobs may share a forward pass) and `jobs.batch_id` (the claim that
  took a job into its batch), with a partial index over each queue's queued jobs for the claim.
- `tenant_queues`: how many jobs each tenant has queued or running, kept by triggers on `jobs`
  (counted once here from the rows that exist). A new unfinished job is admitted by the insert's own
  trigger only while the tenant has fewer than the connection's `blip2.max_unfinished_jobs` (set by
  the API on each connection; unset, no limit): the check costs no query of its own, and it is exact
  under concurrent inserts, since the counter's row is locked and re-read by the upsert.
- A trigger that NOTIFYs channel `job_events` with `<job id> <status>` whenever a job's status or
  progress changes, so long-polls and event streams wake at once instead of polling.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from jobs.db import TENANT_QUEUE_FULL_SQLSTATE

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNFINISHED = "('queued', 'running')"

_ADMIT_FUNCTION = f"""
CREATE FUNCTION blip2_admit_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queue_limit integer := nullif(current_setting('blip2.max_unfinished_jobs', true), '')::integer;
BEGIN
    IF NEW.status NOT IN {_UNFINISHED} THEN
        RETURN NEW;
    END IF;
    INSERT INTO tenant_queues AS counted (tenant, unfinished) VALUES (NEW.tenant, 1)
    ON CONFLICT (tenant) DO UPDATE SET unfinished = counted.unfinished + 1
    WHERE queue_limit IS NULL OR counted.unfinished < queue_limit;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % has % jobs queued or running', NEW.tenant, queue_limit
            USING ERRCODE = '{TENANT_QUEUE_FULL_SQLSTATE}';
    END IF;
    RETURN NEW;
END $$;
"""

_COUNT_FUNCTION = f"""
CREATE FUNCTION blip2_count_unfinished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was boolean := OLD.status IN {_UNFINISHED};
    now_unfinished boolean := NEW.status IN {_UNFINISHED};
BEGIN
    IF now_unfinished AND NOT was THEN
        INSERT INTO tenant_queues (tenant, unfinished) VALUES (NEW.tenant, 1)
        ON CONFLICT (tenant) DO UPDATE SET unfinished = tenant_queues.unfinished + 1;
    ELSIF was AND NOT now_unfinished THEN
        UPDATE tenant_queues SET unfinished = unfinished - 1 WHERE tenant = NEW.tenant;
    END IF;
    RETURN NULL;
END $$;
"""

_NOTIFY_FUNCTION = """
CREATE FUNCTION blip2_notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('job_events', NEW.id::text || ' ' || NEW.status);
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_key", sa.String(32), nullable=True))
    op.add_column("jobs", sa.Column("batch_id", sa.String(64), nullable=True))
    op.create_index("ix_jobs_queued", "jobs", ["queue", "created_at"], postgresql_where=sa.text("status = 'queued'"))
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"], postgresql_where=sa.text("status = 'running'"))
    op.create_table(
        "tenant_queues",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("unfinished", sa.Integer(), nullable=False, server_default="0"),
    )
    op.alter_column("tenant_queues", "unfinished", server_default=None)
    op.execute(
        f"INSERT INTO tenant_queues (tenant, unfinished) SELECT tenant, count(*) FROM jobs"
        f" WHERE status IN {_UNFINISHED} GROUP BY tenant"
    )
    op.execute(_ADMIT_FUNCTION)
    op.execute("CREATE TRIGGER jobs_admit BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION blip2_admit_job()")
    op.execute(_COUNT_FUNCTION)
    op.execute(
        "CREATE TRIGGER jobs_count_unfinished AFTER UPDATE OF status ON jobs"
        " FOR EACH ROW EXECUTE FUNCTION blip2_count_unfinished()"
    )
    op.execute(_NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER jobs_notify AFTER UPDATE OF status, progress ON jobs FOR EACH ROW"
        " WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress)"
        " EXECUTE FUNCTION blip2_notify_job_event()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_notify ON jobs")
    op.execute("DROP FUNCTION blip2_notify_job_event()")
    op.execute("DROP TRIGGER jobs_count_unfinished ON jobs")
    op.execute("DROP FUNCTION blip2_count_unfinished()")
    op.execute("DROP TRIGGER jobs_admit ON jobs")
    op.execute("DROP FUNCTION blip2_admit_job()")
    op.drop_table("tenant_queues")
    op.drop_index("ix_jobs_batch_id", "jobs")
    op.drop_index("ix_jobs_queued", "jobs")
    op.drop_column("jobs", "batch_id")
    op.drop_column("jobs", "batch_key")
