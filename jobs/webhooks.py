"""A tenant's webhook settings, and the check a webhook URL passes before any job or tenant names it.

Each tenant has one signing secret (jobs/webhook_signing.py), made the first time one of its jobs
names a webhook, or by `blip2-jobs tenants webhook-secret`, and optionally a default URL for jobs
that name none (`blip2-jobs tenants webhook`).
"""

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from blip2.data.url_guard import check_url
from blip2.errors import DownloadFailed, ForbiddenUrl
from jobs.errors import InvalidWebhookUrl
from jobs.models import TenantWebhook
from jobs.webhook_signing import new_secret


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
    except ValueError as exc:  # not a URL that can be taken apart (a bad port, a broken IPv6 literal)
        raise InvalidWebhookUrl(f"{url!r} is not a valid URL ({exc})", field=field) from exc
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


def default_url_query(tenant: str) -> Select[str | None]:
    """The URL the tenant's jobs are delivered to when they name none, as a query: a subquery of the
    statement that needs it (a job's INSERT), no round trip of its own. The tenant has a signing
    secret whenever it has a default (set_default_url)."""
    return select(TenantWebhook.url).where(TenantWebhook.tenant == tenant)


def set_default_url(session: Session, tenant: str, url: str | None) -> str:
    """Make `url` (None: no default) the tenant's default webhook; returns the tenant's secret."""
    secret = ensure_secret(session, tenant)
    session.execute(update(TenantWebhook).where(TenantWebhook.tenant == tenant).values(url=url, updated_at=func.now()))
    return secret


def secret_of(session: Session, tenant: str) -> str | None:
    return session.scalars(select(TenantWebhook.secret).where(TenantWebhook.tenant == tenant)).one_or_none()
