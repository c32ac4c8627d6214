"""Webhook secrets, tenants' default URLs, and signatures in the Standard Webhooks style.

Each tenant has one signing secret, `whsec_` and 32 random bytes in base64, made the first time one
of its jobs names a webhook (or by `blip2-jobs tenants webhook-secret`). A delivery is signed with
HMAC-SHA256 over `<webhook-id>.<webhook-timestamp>.<body>`, keyed by the secret's decoded bytes, and
sent as `webhook-signature: v1,<base64 digest>` (https://www.standardwebhooks.com), so a receiver
can check with any Standard Webhooks library, or the few lines in the README, that the body came
from this service and was not changed on the way.
"""

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.data.url_guard import check_url
from blip2.errors import DownloadFailed, ForbiddenUrl
from jobs.errors import InvalidWebhookUrl
from jobs.models import TenantWebhook

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


@dataclass(frozen=True)
class SignedHeaders:
    """The three headers of a signed delivery."""

    webhook_id: str
    timestamp: int
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> SignedHeaders:
    """The headers that let a receiver holding `secret` check `body` (sent at `timestamp`, Unix seconds)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return SignedHeaders(webhook_id, timestamp, f"{SIGNATURE_VERSION},{digest}")


def signature_matches(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether one of the `webhook-signature` values is this body's, signed with `secret`."""
    expected = sign(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body).signature
    offered = headers["webhook-signature"].split()
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def check_webhook_url(url: str, allowed_hosts: list[str], field: str = "webhook_url") -> str:
    """`url` if deliveries may go there: http(s), a public address unless the host is in FETCH_ALLOWED_HOSTS.

    Checked when a job or a tenant names it; every delivery is checked again by the guard (the
    address a name resolves to may change).
    """
    try:
        check_url(url, allowed_hosts)
    except ForbiddenUrl as exc:
        raise ForbiddenUrl(str(exc), field=field) from exc
    except DownloadFailed as exc:  # the host does not resolve
        raise InvalidWebhookUrl(str(exc), field=field) from exc
    return url


# ---- per tenant -----------------------------------------------------------------------------


def ensure_secret(session: Session, tenant: str) -> str:
    """The tenant's signing secret, made now if it has none (concurrent callers end with the same one)."""
    statement = insert(TenantWebhook).values(tenant=tenant, secret=new_secret())
    session.execute(statement.on_conflict_do_nothing(index_elements=["tenant"]))
    return session.scalars(select(TenantWebhook.secret).where(TenantWebhook.tenant == tenant)).one()


def rotate_secret(session: Session, tenant: str) -> str:
    """A new signing secret for the tenant; deliveries from now on are signed with it."""
    ensure_secret(session, tenant)
    secret = new_secret()
    session.execute(
        update(TenantWebhook).where(TenantWebhook.tenant == tenant).values(secret=secret, updated_at=func.now())
    )
    return secret


def default_url(session: Session, tenant: str) -> str | None:
    """The URL the tenant's jobs are delivered to when they name none."""
    return session.scalars(select(TenantWebhook.url).where(TenantWebhook.tenant == tenant)).one_or_none()


def set_default_url(session: Session, tenant: str, url: str | None) -> str:
    """Make `url` (None: no default) the tenant's default webhook; returns the tenant's secret."""
    secret = ensure_secret(session, tenant)
    session.execute(update(TenantWebhook).where(TenantWebhook.tenant == tenant).values(url=url, updated_at=func.now()))
    return secret


def secret_of(session: Session, tenant: str) -> str | None:
    return session.scalars(select(TenantWebhook.secret).where(TenantWebhook.tenant == tenant)).one_or_none()
