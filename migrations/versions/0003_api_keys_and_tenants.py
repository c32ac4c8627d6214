"""API keys, and a tenant on everything a client makes.

`api_keys` holds a SHA-256 per key, never the key. Jobs, images, idempotency keys, datasets and
trained models get a `tenant`; rows that existed before this revision belong to the tenant
`default` (create a key for it with `blip2-jobs keys create --tenant default` to reach them).
Image content hashes, idempotency keys, dataset and trained-model names become unique per tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TENANT_TABLES = ("jobs", "images", "idempotency_keys", "datasets", "trained_models")
_REKEYED = {"idempotency_keys": "key", "datasets": "name", "trained_models": "name"}


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    for table in _TENANT_TABLES:
        # Existing rows go to `default`; new rows always name their tenant, so the default goes again.
        op.add_column(table, sa.Column("tenant", sa.String(64), nullable=False, server_default="default"))
        op.alter_column(table, "tenant", server_default=None)
    op.drop_constraint("images_sha256_key", "images", type_="unique")
    op.create_unique_constraint("uq_images_tenant_sha256", "images", ["tenant", "sha256"])
    for table, column in _REKEYED.items():
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, ["tenant", column])
    op.create_index("ix_jobs_tenant_created_at_id", "jobs", ["tenant", "created_at", "id"])
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status", "jobs")
    op.drop_index("ix_jobs_tenant_created_at_id", "jobs")
    for table, column in _REKEYED.items():
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, [column])
    op.drop_constraint("uq_images_tenant_sha256", "images", type_="unique")
    op.create_unique_constraint("images_sha256_key", "images", ["sha256"])
    for table in _TENANT_TABLES:
        op.drop_column(table, "tenant")
    op.drop_table("api_keys")
