"""Waiting for a job to finish without holding a worker thread or a connection: woken by the job's own
notification (api/job_events.py), reading the row only when it changed."""

import time
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from api.job_events import JobEvents
from jobs.db import SessionFactory
from jobs.models import Job
from jobs.repository import get_job


def _read(sessions: SessionFactory, job_id: UUID, tenant: str) -> Job:
    with sessions() as session:
        return get_job(session, job_id, tenant)


async def wait_for_job(events: JobEvents, sessions: SessionFactory, job_id: UUID, tenant: str, wait_s: float) -> Job:
    """The tenant's job once it is terminal, or as it is after `wait_s` seconds (JobNotFound at once if unknown)."""
    deadline = time.monotonic() + wait_s
    async with events.watching(job_id) as changed:
        job = await run_in_threadpool(_read, sessions, job_id, tenant)
        while not job.status.is_terminal and (left := deadline - time.monotonic()) > 0:
            await events.changed(changed, left)
            job = await run_in_threadpool(_read, sessions, job_id, tenant)
    return job
