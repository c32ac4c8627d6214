"""API keys: made once and shown once, stored only as a SHA-256, looked up per request, revocable.

A key is `b2j_` and 43 URL-safe characters (256 random bits). That is far beyond guessing, so a
plain SHA-256 is the right store: a slow password hash would only slow every request down. The
first characters (`prefix`) stay readable, so `keys list` can say which key is which.

    key = create_key(session, tenant="acme", name="ci")   # print it; it is never shown again
    principal = authenticate(session, key)                  # None for unknown or revoked keys
"""

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from jobs.db import SessionFactory, session_scope
from jobs.errors import ApiKeyNotFound, InvalidTenant
from jobs.models import TENANT_LENGTH, ApiKey

KEY_PREFIX = "b2j_"
_SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8
# Tenant names are directory names too (BLIP2_DATA_DIR/tenants/NAME), so: no dots, no slashes.
TENANT_PATTERN = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{TENANT_LENGTH - 1}}}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (rate limits count per key) and its tenant (what it may see)."""

    key_id: UUID
    tenant: str


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `secret` is the key itself, returned this once."""

    row: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name, else InvalidTenant."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidTenant(
            f"tenant {tenant!r}: use 1 to {TENANT_LENGTH} lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return tenant


def create_key(session: Session, *, tenant: str, name: str = "") -> CreatedKey:
    """A new key for `tenant` (flushed; committed by the caller)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant=check_tenant(tenant), name=name, prefix=secret[:_SHOWN_PREFIX_LENGTH], key_hash=hash_key(secret)
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return CreatedKey(row=row, secret=secret)


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    if not secret.startswith(KEY_PREFIX):
        return None
    query = select(ApiKey.id, ApiKey.tenant).where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
    row = session.execute(query).first()
    return None if row is None else Principal(key_id=row.id, tenant=row.tenant)


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Keys oldest first, revoked ones included, optionally of one tenant."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key: str) -> ApiKey:
    """Revoke the key with this id or shown prefix; from then on it answers 401. Revoking twice is harmless."""
    matches = list(session.scalars(select(ApiKey).where(_identified_by(key))))
    if len(matches) != 1:
        raise ApiKeyNotFound(f"no key {key!r}" if not matches else f"{key!r} names {len(matches)} keys; use its id")
    statement = (
        update(ApiKey)
        .where(ApiKey.id == matches[0].id)
        .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
        .returning(ApiKey)
        .execution_options(populate_existing=True)
    )
    return session.scalars(statement).one()


def _identified_by(key: str) -> ColumnElement[bool]:
    try:
        return ApiKey.id == UUID(key)
    except ValueError:
        return ApiKey.prefix == key


DEVELOPMENT_TENANT = "dev"


def development_key(sessions: SessionFactory, key_file: Path) -> str:
    """The embedded default's key (tenant `dev`): the one saved in `key_file` while it still works, else a new one.

    Only `blip2-jobs up` on its embedded servers calls this; pointed at real servers it makes no key.
    The file is readable by its owner alone, like an SSH key.
    """
    if key_file.is_file():
        saved = key_file.read_text().strip()
        with sessions() as session:
            if authenticate(session, saved) is not None:
                return saved
    with session_scope(sessions) as session:
        secret = create_key(session, tenant=DEVELOPMENT_TENANT, name="development (blip2-jobs up)").secret
    key_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secret + "\n")
    return secret
