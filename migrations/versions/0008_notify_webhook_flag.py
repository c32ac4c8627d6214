"""The job notification says whether the job has a webhook: `<job id> <status> webhook`.

The API's webhook deliverer wakes when a job with a webhook ends (api/main.py), not at every job's
end: at tens of jobs a second, each end cost every API process a query for due deliveries.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITH_FLAG = """
CREATE OR REPLACE FUNCTION blip2_notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'job_events',
        NEW.id::text || ' ' || NEW.status || CASE WHEN NEW.webhook_url IS NULL THEN '' ELSE ' webhook' END
    );
    RETURN NULL;
END $$;
"""

_WITHOUT_FLAG = """
CREATE OR REPLACE FUNCTION blip2_notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('job_events', NEW.id::text || ' ' || NEW.status);
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(_WITH_FLAG)


def downgrade() -> None:
    op.execute(_WITHOUT_FLAG)
