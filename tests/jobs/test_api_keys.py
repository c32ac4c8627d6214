"""API keys in Postgres: only a hash is stored, keys authenticate until revoked, the dev key is reused."""

import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.api_keys import authenticate, create_key, development_key, hash_key, list_keys, revoke_key
from jobs.db import SessionFactory, session_scope
from jobs.errors import ApiKeyNotFound, InvalidTenant
from jobs.models import ApiKey


def test_only_the_hash_is_stored(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session:
        created = create_key(session, tenant="acme", name="ci")
    with session_scope(sessions) as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.id == created.row.id)).one()
        columns = [str(getattr(stored, c.name)) for c in ApiKey.__table__.columns]
    assert created.secret.startswith("b2j_") and len(created.secret) > 40
    assert stored.key_hash == hash_key(created.secret) != created.secret
    assert not any(created.secret in value for value in columns)
    assert created.secret.startswith(stored.prefix) and len(stored.prefix) < 16


def test_a_key_authenticates_its_tenant_until_revoked(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session:
        created = create_key(session, tenant="acme")
    with session_scope(sessions) as session:
        principal = authenticate(session, created.secret)
        assert principal is not None and (principal.tenant, principal.key_id) == ("acme", created.row.id)
        assert authenticate(session, created.secret + "x") is None
        assert authenticate(session, "not-a-key") is None
        revoke_key(session, created.row.prefix)
    with session_scope(sessions) as session:
        assert authenticate(session, created.secret) is None
        again = revoke_key(session, str(created.row.id))  # harmless the second time
        assert again.revoked_at is not None


def test_list_and_revoke_errors(sessions: SessionFactory) -> None:
    with session_scope(sessions) as session:
        first = create_key(session, tenant="listed-a").row
        create_key(session, tenant="listed-b")
    with session_scope(sessions) as session:
        assert [k.id for k in list_keys(session, "listed-a")] == [first.id]
        assert {"listed-a", "listed-b"} <= {k.tenant for k in list_keys(session)}
        with pytest.raises(ApiKeyNotFound):
            revoke_key(session, "b2j_nothere")
        with pytest.raises(ApiKeyNotFound):
            revoke_key(session, "00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize("tenant", ["", "Acme", "../etc", "a/b", "a.b", "-x", "x" * 65])
def test_tenant_names_are_safe_directory_names(sessions: SessionFactory, tenant: str) -> None:
    with session_scope(sessions) as session, pytest.raises(InvalidTenant):
        create_key(session, tenant=tenant)


def test_development_key_is_saved_private_and_reused(sessions: SessionFactory, tmp_path: Path) -> None:
    key_file = tmp_path / "dev-api-key"
    first = development_key(sessions, key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert development_key(sessions, key_file) == first
    with session_scope(sessions) as session:
        principal = authenticate(session, first)
        assert principal is not None and principal.tenant == "dev"
        revoke_key(session, str(principal.key_id))
    replacement = development_key(sessions, key_file)  # a revoked saved key is replaced, not reused
    assert replacement != first and key_file.read_text().strip() == replacement
