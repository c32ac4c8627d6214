"""Sending webhooks from the outbox: claim what is due, POST it signed, record the answer, back off.

The outbox rows are written by a trigger on `jobs` when a job becomes terminal (migration
0006_webhooks), so they exist whoever finished the job and survive any restart. Each API process
runs `deliver_due` every WEBHOOK_INTERVAL_S, and at once when a job finishes (api/main.py):

1. claim: the due rows are taken with `FOR UPDATE SKIP LOCKED`, their `attempts` counted up and
   their `next_attempt_at` moved past the time a send may take (a lease), and committed; so several
   deliverers never send one row at once, no transaction stays open while a receiver answers, and
   a deliverer that dies mid-send leaves the row to be sent again when its lease runs out;
2. send: the job's public JSON, signed (jobs/webhook_signing.py), through the SSRF guard, redirects not
   followed, within WEBHOOK_TIMEOUT_S; a 2xx answer is the receiver's acknowledgement;
3. record, only if this attempt still holds the row: delivered, or the next attempt after
   WEBHOOK_RETRY_BASE_S * 2^(attempts - 1) (at most WEBHOOK_RETRY_MAX_S), or given up after
   WEBHOOK_MAX_ATTEMPTS.

Every attempt carries the same `webhook-id` (the delivery's id), so a receiver that acknowledged too
late to be heard (it was slower than the timeout) can tell the retry is one it has already seen.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from blip2.data.url_guard import guarded_client
from blip2.errors import Blip2Error
from jobs.db import SessionFactory, session_scope
from jobs.models import DeliveryStatus, Job, WebhookDelivery
from jobs.schemas import job_public
from jobs.settings import Settings
from jobs.webhook_signing import sign
from jobs.webhooks import ensure_secret

log = logging.getLogger(__name__)

CLAIM_BATCH = 32
_LEASE_MARGIN_S = 30.0  # beyond the send's own timeout, before a claimed row is taken for lost
_MAX_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Claimed:
    """One delivery this deliverer holds for one attempt: what to send, where, and the attempt token."""

    delivery_id: UUID
    url: str
    attempt: int
    body: bytes
    secret: str


@dataclass(frozen=True)
class Outcome:
    """How an attempt went: the receiver's status (None: no answer) and, unless acknowledged, why not."""

    status: int | None
    error: str | None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def deliver_due(sessions: SessionFactory, settings: Settings) -> int:
    """Send every delivery that is due (up to CLAIM_BATCH at once); returns how many were attempted."""
    with session_scope(sessions) as session:
        claimed = claim_due(session, settings)
    if not claimed:
        return 0
    with ThreadPoolExecutor(max_workers=min(8, len(claimed))) as pool:
        outcomes = list(pool.map(lambda c: send(c, settings), claimed))
    with session_scope(sessions) as session:
        for delivery, outcome in zip(claimed, outcomes, strict=True):
            record(session, delivery, outcome, settings)
    return len(claimed)


def claim_due(session: Session, settings: Settings) -> list[Claimed]:
    """Take the due deliveries for one attempt each (see the module docstring), with what each sends."""
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= func.now())
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(CLAIM_BATCH)
        .with_for_update(skip_locked=True)
    )
    lease = timedelta(seconds=settings.WEBHOOK_TIMEOUT_S + _LEASE_MARGIN_S)
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(due.scalar_subquery()))
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=func.now() + lease)
        .returning(WebhookDelivery)
    )
    return [_claimed(session, row) for row in session.scalars(statement).all()]


def _claimed(session: Session, delivery: WebhookDelivery) -> Claimed:
    job = session.get_one(Job, delivery.job_id)
    return Claimed(delivery.id, delivery.url, delivery.attempts, payload(job), ensure_secret(session, delivery.tenant))


def payload(job: Job) -> bytes:
    """The body of a job's webhook: its public JSON, without the delivery's own state (which changes
    with every attempt, while the body must not)."""
    return job_public(job).model_dump_json(exclude={"webhook"}).encode()


def send(delivery: Claimed, settings: Settings) -> Outcome:
    """POST the signed body once; any answer but a 2xx, and any failure to get one, is not delivered."""
    signed = sign(delivery.secret, str(delivery.delivery_id), int(time.time()), delivery.body)
    headers = signed.as_dict() | {"content-type": "application/json", "user-agent": "blip2-jobs-webhooks"}
    timeout = httpx.Timeout(settings.WEBHOOK_TIMEOUT_S)
    try:
        with (
            guarded_client(settings.fetch_allowed_hosts, timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", delivery.url, content=delivery.body, headers=headers) as response,
        ):
            status = response.status_code  # the body is never read: a receiver cannot make us download
    except httpx.TimeoutException:
        return Outcome(None, f"no answer within {settings.WEBHOOK_TIMEOUT_S:g} s")
    except (httpx.HTTPError, httpx.InvalidURL, Blip2Error) as exc:  # Blip2Error: the guard refused the address
        return Outcome(None, _short(f"{type(exc).__name__}: {exc}"))
    return Outcome(status, None if 200 <= status < 300 else f"HTTP {status}")


def record(session: Session, delivery: Claimed, outcome: Outcome, settings: Settings) -> bool:
    """Write the attempt's outcome, unless another attempt has taken the row since (False then)."""
    statement = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery.delivery_id,
            WebhookDelivery.attempts == delivery.attempt,
            WebhookDelivery.status == DeliveryStatus.PENDING,
        )
        .values(last_status=outcome.status, last_error=outcome.error, **_next_state(delivery, outcome, settings))
        .returning(WebhookDelivery.id)
    )
    recorded = session.execute(statement).first() is not None
    if not outcome.acknowledged:
        log.info("webhook %s attempt %d to %s: %s", delivery.delivery_id, delivery.attempt, delivery.url, outcome.error)
    return recorded


def _next_state(delivery: Claimed, outcome: Outcome, settings: Settings) -> dict[str, object]:
    if outcome.acknowledged:
        return {"status": DeliveryStatus.DELIVERED, "delivered_at": func.now()}
    if delivery.attempt >= settings.WEBHOOK_MAX_ATTEMPTS:
        return {"status": DeliveryStatus.FAILED}
    return {"next_attempt_at": func.now() + timedelta(seconds=retry_delay_s(delivery.attempt, settings))}


def retry_delay_s(attempts: int, settings: Settings) -> float:
    """How long after its `attempts`-th failed attempt a delivery is tried again."""
    return float(min(settings.WEBHOOK_RETRY_BASE_S * 2 ** (attempts - 1), settings.WEBHOOK_RETRY_MAX_S))


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 1] + "…"
