"""Waiting for a job to finish without holding a worker thread: poll Postgres from the event loop."""

import asyncio
import time
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from jobs.db import SessionFactory
from jobs.models import Job
from jobs.repository import get_job

POLL_INTERVAL_S = 0.2


def _read(sessions: SessionFactory, job_id: UUID, tenant: str) -> Job:
    with sessions() as session:
        return get_job(session, job_id, tenant)


async def wait_for_job(sessions: SessionFactory, job_id: UUID, tenant: str, wait_s: float) -> Job:
    """The tenant's job once it is terminal, or as it is after `wait_s` seconds (JobNotFound at once if unknown)."""
    deadline = time.monotonic() + wait_s
    job = await run_in_threadpool(_read, sessions, job_id, tenant)
    while not job.status.is_terminal and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0)))
        job = await run_in_threadpool(_read, sessions, job_id, tenant)
    return job
