"""Webhooks: a job's `webhook_url`, each tenant's signing secret and default URL, and a durable outbox.

- `jobs.webhook_url`: where the job's outcome is POSTed (the request's, or its tenant's default at
  submission); NULL for no webhook.
- `tenant_webhooks`: per tenant, the `whsec_...` signing secret and an optional default URL
  (`blip2-jobs tenants webhook`).
- `webhook_deliveries`: the outbox, one row per job with a webhook, written by a trigger on `jobs`
  in the same transaction as the job's move to a terminal state, whoever makes it (a worker, a
  cancel, the sweeper, the hard time limit), or as a job is inserted terminal already (answered by
  the result cache), and worked off by the API processes' deliverers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TERMINAL = "('succeeded', 'failed', 'canceled')"

_ENQUEUE_FUNCTION = """
CREATE FUNCTION blip2_enqueue_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, job_id, tenant, url, status, attempts, next_attempt_at, created_at)
    VALUES (gen_random_uuid(), NEW.id, NEW.tenant, NEW.webhook_url, 'pending', 0, now(), now())
    ON CONFLICT (job_id) DO NOTHING;
    RETURN NULL;
END $$;
"""


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    default = None if nullable else sa.func.now()
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("webhook_url", sa.String(2000), nullable=True))
    op.create_table(
        "tenant_webhooks",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("url", sa.String(2000), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        _timestamp("next_attempt_at"),
        _timestamp("delivered_at", nullable=True),
        _timestamp("created_at"),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.execute(_ENQUEUE_FUNCTION)
    op.execute(
        "CREATE TRIGGER jobs_enqueue_webhook AFTER UPDATE OF status ON jobs FOR EACH ROW"
        f" WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IN {_TERMINAL} AND OLD.status NOT IN {_TERMINAL})"
        " EXECUTE FUNCTION blip2_enqueue_webhook()"
    )
    op.execute(
        "CREATE TRIGGER jobs_enqueue_webhook_on_insert AFTER INSERT ON jobs FOR EACH ROW"
        f" WHEN (NEW.webhook_url IS NOT NULL AND NEW.status IN {_TERMINAL})"
        " EXECUTE FUNCTION blip2_enqueue_webhook()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_enqueue_webhook_on_insert ON jobs")
    op.execute("DROP TRIGGER jobs_enqueue_webhook ON jobs")
    op.execute("DROP FUNCTION blip2_enqueue_webhook()")
    op.drop_index("ix_webhook_deliveries_due", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("tenant_webhooks")
    op.drop_column("jobs", "webhook_url")
