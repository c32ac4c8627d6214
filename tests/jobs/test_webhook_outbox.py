"""The webhook outbox in Postgres: the jobs table's trigger writes one delivery when a job with a
webhook ends, however it ends; deliverers claim a due delivery once (a lease, SKIP LOCKED), and an
attempt that lost its claim cannot record over the next one."""

from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from sqlalchemy import select, update

from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import DeliveryStatus, Job, WebhookDelivery
from jobs.repository import add_job, cancel_job, claim_job, fail_batch, succeed_job
from jobs.settings import Settings
from jobs.webhook_delivery import Outcome, claim_due, record, retry_delay_s
from jobs.webhooks import ensure_secret
from tests.support.auth import TENANT

URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def new_job(sessions: SessionFactory, empty_tables: None) -> Iterator[object]:
    def make(webhook_url: str | None = URL) -> UUID:
        with session_scope(sessions) as session:
            ensure_secret(session, TENANT)
            job = add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue="infer.none",
                          input={"image_id": str(uuid4())}, webhook_url=webhook_url)  # fmt: skip
            return job.id

    yield make


def deliveries(sessions: SessionFactory, job_id: UUID) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)))


def test_one_delivery_per_job_however_it_ends(sessions: SessionFactory, new_job) -> None:  # type: ignore[no-untyped-def]
    succeeded, canceled, killed, silent = new_job(), new_job(), new_job(), new_job(None)
    with session_scope(sessions) as session:
        run = claim_job(session, succeeded)
        assert run is not None
        succeed_job(session, run.attempt, {"captions": ["x"]})
        cancel_job(session, canceled, TENANT)
        claim_job(session, killed, batch_id="batch-1")
        fail_batch(session, "batch-1", "time_limit_exceeded", "killed at the hard time limit")
        claim_job(session, silent)
    assert [len(deliveries(sessions, job)) for job in (succeeded, canceled, killed)] == [1, 1, 1]
    assert deliveries(sessions, silent) == [], "a job without a webhook got a delivery"
    with session_scope(sessions) as session:  # a terminal job touched again: still one delivery
        session.execute(update(Job).where(Job.id == succeeded).values(status="failed"))
    assert len(deliveries(sessions, succeeded)) == 1
    [delivery] = deliveries(sessions, killed)
    assert (delivery.url, delivery.status, delivery.attempts) == (URL, DeliveryStatus.PENDING, 0)


def test_a_due_delivery_is_claimed_once_and_a_lost_claim_cannot_record(
    sessions: SessionFactory, settings: Settings, new_job
) -> None:  # type: ignore[no-untyped-def]
    job_id = new_job()
    with session_scope(sessions) as session:
        cancel_job(session, job_id, TENANT)
    with session_scope(sessions) as first:
        [claimed] = claim_due(first, settings)
        with session_scope(sessions) as second:
            assert job_id not in _claimed_jobs(second, settings), "two deliverers claimed one delivery"
    assert claimed.attempt == 1 and b'"status":"canceled"' in claimed.body
    with session_scope(sessions) as session:  # the lease ran out: another deliverer takes attempt 2
        session.execute(update(WebhookDelivery).values(next_attempt_at=WebhookDelivery.created_at))
        assert job_id in _claimed_jobs(session, settings)
    with session_scope(sessions) as session:
        assert not record(session, claimed, Outcome(204, None), settings), "a stale attempt recorded"
    assert deliveries(sessions, job_id)[0].status == DeliveryStatus.PENDING


def _claimed_jobs(session, settings: Settings) -> set[UUID]:  # type: ignore[no-untyped-def]
    ids = {c.delivery_id for c in claim_due(session, settings)}
    return set(session.scalars(select(WebhookDelivery.job_id).where(WebhookDelivery.id.in_(ids))))


def test_retries_back_off_and_stop(settings: Settings) -> None:
    fast = settings.model_copy(update={"WEBHOOK_RETRY_BASE_S": 2.0, "WEBHOOK_RETRY_MAX_S": 10.0})
    assert [retry_delay_s(n, fast) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
