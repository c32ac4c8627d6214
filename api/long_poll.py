"""Waiting on a job without holding a worker thread or a connection: woken by the job's own
notification (api/job_events.py), reading the row only when it changed.

`wait_for_job` answers a long-poll once; `follow_job` yields the job at each change, for an event stream.
"""

import time
from collections.abc import AsyncIterator
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from api.job_events import SAFETY_POLL_S, JobEvents
from jobs.db import SessionFactory
from jobs.errors import JobNotFound
from jobs.models import Job
from jobs.repository import get_job
from jobs.schemas import JobPublicBase, job_public


def _read(sessions: SessionFactory, job_id: UUID, tenant: str) -> Job:
    """The job, read outside any transaction: one statement is one round trip, with no ROLLBACK after it."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return get_job(session, job_id, tenant)


async def wait_for_job(
    events: JobEvents, sessions: SessionFactory, job_id: UUID, tenant: str, wait_s: float, known: Job | None = None
) -> Job:
    """The tenant's job once it is terminal, or as it is after `wait_s` seconds (JobNotFound at once if unknown).

    `known`: the job as the caller has just read or written it, so it is read again only once it ends
    (or the wait is over); a notification that it ended, heard before this subscribed, counts.
    """
    deadline = time.monotonic() + wait_s
    async with events.watching(job_id, ends_only=True) as changed:
        if known is None or events.ended_lately(job_id):
            job = await run_in_threadpool(_read, sessions, job_id, tenant)
        else:
            job = known
        while not job.status.is_terminal and (left := deadline - time.monotonic()) > 0:
            await events.changed(changed, left)
            job = await run_in_threadpool(_read, sessions, job_id, tenant)
    return job


async def follow_job(
    events: JobEvents, sessions: SessionFactory, job_id: UUID, tenant: str
) -> AsyncIterator[JobPublicBase]:
    """The tenant's job as it is now, then each time its status or progress changes, the last one terminal.

    Ends early if the job disappears (deleted meanwhile).
    """
    seen: tuple[object, ...] | None = None
    async with events.watching(job_id) as changed:
        while True:
            try:
                job = await run_in_threadpool(_read, sessions, job_id, tenant)
            except JobNotFound:
                return
            public = job_public(job)
            if (state := (public.status, public.progress, public.progress_detail)) != seen:
                seen = state
                yield public
            if job.status.is_terminal:
                return
            await events.changed(changed, SAFETY_POLL_S)
