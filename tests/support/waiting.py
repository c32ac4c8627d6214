"""Waiting for a job to reach a terminal state, read straight from Postgres, or for any condition."""

import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from jobs.db import SessionFactory
from jobs.models import Job
from jobs.repository import get_job

T = TypeVar("T")


def wait_terminal(sessions: SessionFactory, job_id: UUID, timeout_s: float = 120) -> Job:
    deadline = time.monotonic() + timeout_s
    while True:
        with sessions() as session:
            job = get_job(session, job_id)
        if job.status.is_terminal or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60, interval_s: float = 0.05) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


def wait_for_value(get: Callable[[], T | None], what: str, timeout_s: float = 60, interval_s: float = 0.02) -> T:
    """Poll `get` until it returns something other than None, and return that; TimeoutError naming
    `what` if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (value := get()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
    return value
