"""NOTIFY `api_key_changes` with the key's tenant whenever an API key is revoked or deleted, so that
the API processes drop the keys they keep of that tenant (api/key_cache.py). A new key needs no
notice: only keys found valid are kept. The notice is sent when the change commits.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION blip2_notify_api_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_key_changes', OLD.tenant);
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER api_keys_notify AFTER UPDATE OR DELETE ON api_keys"
        " FOR EACH ROW EXECUTE FUNCTION blip2_notify_api_key_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_notify ON api_keys")
    op.execute("DROP FUNCTION blip2_notify_api_key_change()")
