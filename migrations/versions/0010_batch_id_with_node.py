"""`jobs.batch_id` holds a claim's task id and its worker's node name (worker/time_limits.py `claim_id`).

The task id alone (a job id, 36 characters) fitted 64; a Celery node name (`infer.<model>-gpu0@<host>`)
does not, so the column is text. Postgres changes varchar to text without rewriting the table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("jobs", "batch_id", type_=sa.Text(), existing_type=sa.String(64), existing_nullable=True)


def downgrade() -> None:
    # A claim running now keeps its id; one longer than 64 characters is cut (it only names the claim).
    op.execute("UPDATE jobs SET batch_id = left(batch_id, 64) WHERE length(batch_id) > 64")
    op.alter_column("jobs", "batch_id", type_=sa.String(64), existing_type=sa.Text(), existing_nullable=True)
