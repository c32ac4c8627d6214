"""Workers of a trained model: its jobs go to its own queue while a worker there is alive, to its base
model's otherwise, and jobs left on the queue of workers that all died are moved and sent again."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from blip2.registry import Registry
from jobs.broker import Dispatcher
from jobs.catalog import save_trained_model
from jobs.db import SessionFactory, session_scope
from jobs.models import Job, TrainedModel, WorkerPresence
from jobs.presence import PresenceCache, announce, is_served, withdraw
from jobs.queues import TRAINED_QUEUE_PREFIX, queue_for_model, queue_for_trained
from jobs.repository import get_job
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import Submission, submit_job
from jobs.sweeper import sweep_once
from tests.support.auth import TENANT
from tests.support.broker import drain, waiting_job_ids
from tests.support.images import png_base64

BASE_QUEUE = "infer.tiny-opt"
OWN_QUEUE = queue_for_trained(TENANT, "presence-mine")
LEASE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def trained(empty_tables: None, sessions: SessionFactory, key_prefix: str) -> None:
    with session_scope(sessions) as session:
        session.query(WorkerPresence).delete()
        row = TrainedModel(tenant=TENANT, name="presence-mine", family="opt", path="/nowhere", base_model="tiny-opt",
                           task="caption", dataset="shapes", metrics={})  # fmt: skip
        save_trained_model(session, row)
    for queue in (BASE_QUEUE, OWN_QUEUE):
        drain(key_prefix, queue)


def submission(sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings) -> Submission:
    """A submission reading presence afresh every time (the API's remembers it for two seconds)."""
    return Submission(sessions, dispatcher, Registry.load(), settings, presence=PresenceCache(ttl_s=0))


def submit(ctx: Submission) -> Job:
    body = {"kind": "caption", "model": "presence-mine", "input": {"image": png_base64()}, "cache": False}
    return submit_job(ctx, TENANT, JOB_CREATE_ADAPTER.validate_python(body)).job


def test_jobs_go_to_the_trained_models_own_workers_while_one_lives(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    ctx = submission(sessions, dispatcher, settings)
    assert OWN_QUEUE == "infer.tenant.test.presence-mine"
    assert submit(ctx).queue == BASE_QUEUE, "no worker of its own: the base model's workers serve it"
    with session_scope(sessions) as session:
        announce(session, [OWN_QUEUE], "host/1", LEASE)
    assert submit(ctx).queue == OWN_QUEUE
    assert len(waiting_job_ids(key_prefix, OWN_QUEUE)) == 1, "its message went elsewhere"
    with session_scope(sessions) as session:
        session.execute(update(WorkerPresence).values(expires_at=WorkerPresence.expires_at - 2 * LEASE))
        assert not is_served(session, OWN_QUEUE)
    assert submit(ctx).queue == BASE_QUEUE, "a worker silent for a lease still got jobs"
    with session_scope(sessions) as session:
        announce(session, [OWN_QUEUE], "host/2", LEASE)
        withdraw(session, "host/2")
    assert submit(ctx).queue == BASE_QUEUE, "a worker that stopped still got jobs"


def test_a_process_remembers_presence_for_a_moment(sessions: SessionFactory) -> None:
    cache = PresenceCache(ttl_s=3600)
    with sessions() as session:
        assert not cache.is_served(session, OWN_QUEUE)
        announce(session, [OWN_QUEUE], "host/1", LEASE)
        assert not cache.is_served(session, OWN_QUEUE), "read the database again within the cache's time"
        assert PresenceCache(ttl_s=0).is_served(session, OWN_QUEUE)
        session.rollback()


def test_jobs_stranded_on_a_dead_queue_go_to_the_base_models_workers(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    with session_scope(sessions) as session:
        announce(session, [OWN_QUEUE], "host/1", LEASE)
    ctx = submission(sessions, dispatcher, settings)
    ids = [submit(ctx).id, submit(ctx).id]
    assert sweep_once(sessions, dispatcher, settings).rerouted == 0, "jobs of a live worker were moved"
    with session_scope(sessions) as session:  # the worker dies: its row is a lease old
        session.execute(update(WorkerPresence).values(expires_at=WorkerPresence.expires_at - 2 * LEASE))
    assert sweep_once(sessions, dispatcher, settings, recover_lost=False).rerouted == 0, "moved during an outage"
    assert sweep_once(sessions, dispatcher, settings).rerouted == 2
    with session_scope(sessions) as session:
        jobs = [get_job(session, job_id) for job_id in ids]
    assert [(job.queue, job.status) for job in jobs] == [(BASE_QUEUE, JobStatus.QUEUED)] * 2
    assert set(waiting_job_ids(key_prefix, BASE_QUEUE)) == {str(job_id) for job_id in ids}


def test_a_hub_id_named_like_a_trained_model_keeps_off_its_queue(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    """`tenant.a/b.mine` made queue-safe reads `tenant.a_b.mine`: tenant `a_b`'s model `mine`. Its jobs
    must not reach that tenant's workers, nor be "moved" to the same queue (and re-sent) every sweep."""
    hub_id = "tenant.a/b.mine"
    assert queue_for_model(hub_id) != queue_for_trained("a_b", "mine")
    assert not queue_for_model(hub_id).startswith(TRAINED_QUEUE_PREFIX)
    body = {"kind": "caption", "model": hub_id, "input": {"image": png_base64()}, "cache": False}
    ctx = submission(sessions, dispatcher, settings)
    job = submit_job(ctx, TENANT, JOB_CREATE_ADAPTER.validate_python(body)).job
    assert job.queue == queue_for_model(hub_id)
    drain(key_prefix, job.queue)
    assert sweep_once(sessions, dispatcher, settings).rerouted == 0
    assert waiting_job_ids(key_prefix, job.queue) == []


def test_a_job_stored_on_a_trained_queue_by_a_hub_id_is_moved_once(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str
) -> None:
    """A job queued before the escape, on the queue its hub id used to share: moved to its own, once."""
    hub_id = "tenant.a/b.mine"
    body = {"kind": "caption", "model": hub_id, "input": {"image": png_base64()}, "cache": False}
    job = submit_job(submission(sessions, dispatcher, settings), TENANT, JOB_CREATE_ADAPTER.validate_python(body)).job
    drain(key_prefix, job.queue)
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job.id).values(queue=queue_for_trained("a_b", "mine")))
    assert sweep_once(sessions, dispatcher, settings).rerouted == 1
    assert sweep_once(sessions, dispatcher, settings).rerouted == 0
    with session_scope(sessions) as session:
        assert get_job(session, job.id).queue == queue_for_model(hub_id)
    assert waiting_job_ids(key_prefix, queue_for_model(hub_id)) == [str(job.id)]
