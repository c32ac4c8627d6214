"""API keys for tests: made directly in the test session's database, as `blip2-jobs keys create` makes them."""

from jobs.api_keys import create_key
from jobs.db import SessionFactory, session_scope

# The tenant the tests' `client` and `http` fixtures act for; `other_tenant_*` fixtures use another.
TENANT = "test"
OTHER_TENANT = "other"


def new_key(sessions: SessionFactory, tenant: str = TENANT, name: str = "test") -> str:
    """A new key for `tenant`; returns the secret to send as `Authorization: Bearer <key>`."""
    with session_scope(sessions) as session:
        return create_key(session, tenant=tenant, name=name).secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
