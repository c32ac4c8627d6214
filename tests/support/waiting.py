"""Waiting for a job to reach a terminal state, read straight from Postgres."""

import time
from uuid import UUID

from jobs.db import SessionFactory
from jobs.models import Job
from jobs.repository import get_job


def wait_terminal(sessions: SessionFactory, job_id: UUID, timeout_s: float = 120) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            job = get_job(session, job_id)
        if job.status.is_terminal or time.monotonic() > deadline:
            return job
        time.sleep(0.2)
