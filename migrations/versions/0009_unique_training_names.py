"""At most one queued or running training job per tenant and `output_model`.

Two training jobs of one name were both accepted, and the second's model replaced the first's. A
partial unique index over the unfinished training jobs refuses the second row however the two
arrive (two requests at once, two jobs of one batch); the submission answers 409 `model_name_taken`.

Jobs that already share a name keep the one that got furthest (a running one, else the oldest); the
others fail with `model_name_taken`, as their submission would be answered now.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "uq_jobs_training_output_model"
_UNFINISHED_TRAINING = "kind = 'train' AND status IN ('queued', 'running')"

_FAIL_ALL_BUT_ONE = f"""
UPDATE jobs SET status = 'failed', finished_at = now(), error_code = 'model_name_taken',
    error_message = 'another training job of this tenant makes a model named ' || (input ->> 'output_model')
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY tenant, input ->> 'output_model' ORDER BY status = 'running' DESC, created_at, id
        ) AS place
        FROM jobs WHERE {_UNFINISHED_TRAINING}
    ) AS named WHERE place > 1
)
"""


def upgrade() -> None:
    op.execute(_FAIL_ALL_BUT_ONE)
    op.create_index(
        _INDEX,
        "jobs",
        ["tenant", sa.text("(input ->> 'output_model')")],
        unique=True,
        postgresql_where=sa.text(_UNFINISHED_TRAINING),
    )


def downgrade() -> None:
    op.drop_index(_INDEX, "jobs")
