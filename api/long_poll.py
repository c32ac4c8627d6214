"""Waiting on a job without holding a worker thread or a connection: woken by the job's own
notification (api/job_events.py), reading the row only when it changed.

`wait_for_job` answers a long-poll once; `follow_job` yields the job at each change, for an event stream.
Their reads go through `JobReads`, which reads together the jobs whose waiters woke together.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from api.job_events import SAFETY_POLL_S, JobEvents
from jobs.db import SessionFactory
from jobs.errors import JobNotFound
from jobs.models import Job
from jobs.repository import get_jobs, tenants_job
from jobs.schemas import JobPublicBase, job_public


class JobReads:
    """Reads of the jobs waited on, coalesced: the waiters woken by one burst of notifications (a
    worker's batch ends in one commit, its jobs' notifications with it) read their jobs in one
    statement, on one worker thread, instead of one each."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions
        self._pending: dict[UUID, list[tuple[str, asyncio.Future[Job]]]] = {}
        self._reading: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self, job_id: UUID, tenant: str) -> Job:
        """The tenant's job as it is now (JobNotFound if there is none)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another event loop (a test client's each): nothing of the last one carries over
            self._loop, self._pending, self._reading = loop, {}, None
        future: asyncio.Future[Job] = loop.create_future()
        self._pending.setdefault(job_id, []).append((tenant, future))
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_pending())
        return await future

    async def _read_pending(self) -> None:
        await asyncio.sleep(0)  # the waiters woken with the first one ask in the meantime
        pending, self._pending, self._reading = self._pending, {}, None
        try:
            jobs = await run_in_threadpool(_read, self._sessions, list(pending))
        except Exception as exc:
            for waiters in pending.values():
                _answer(waiters, partial(_raise, exc))
            return
        for job_id, waiters in pending.items():
            _answer(waiters, partial(tenants_job, jobs.get(job_id), job_id))


def _answer(waiters: list[tuple[str, "asyncio.Future[Job]"]], outcome: Callable[[str], Job]) -> None:
    """Each waiter still waiting gets `outcome(its tenant)`, or what it raised (another tenant's job: not found)."""
    for tenant, future in waiters:
        if future.done():  # its request went away meanwhile
            continue
        try:
            future.set_result(outcome(tenant))
        except Exception as exc:
            future.set_exception(exc)


def _raise(exc: Exception, _tenant: str) -> Job:
    raise exc


def _read(sessions: SessionFactory, job_ids: list[UUID]) -> dict[UUID, Job]:
    """The jobs, read outside any transaction: one statement is one round trip, with no ROLLBACK after it."""
    with sessions() as session:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        return get_jobs(session, job_ids)


async def wait_for_job(
    events: JobEvents, reads: JobReads, job_id: UUID, tenant: str, wait_s: float, known: Job | None = None
) -> Job:
    """The tenant's job once it is terminal, or as it is after `wait_s` seconds (JobNotFound at once if unknown).

    `known`: the job as the caller has just read or written it, so it is read again only once it ends
    (or the wait is over); a notification that it ended, heard before this subscribed, counts.
    """
    deadline = time.monotonic() + wait_s
    async with events.watching(job_id, ends_only=True) as changed:
        if known is None or events.ended_lately(job_id):
            job = await reads.read(job_id, tenant)
        else:
            job = known
        while not job.status.is_terminal and (left := deadline - time.monotonic()) > 0:
            await events.changed(changed, left)
            job = await reads.read(job_id, tenant)
    return job


async def follow_job(events: JobEvents, reads: JobReads, job_id: UUID, tenant: str) -> AsyncIterator[JobPublicBase]:
    """The tenant's job as it is now, then each time its status or progress changes, the last one terminal.

    Ends early if the job disappears (deleted meanwhile).
    """
    seen: tuple[object, ...] | None = None
    async with events.watching(job_id) as changed:
        while True:
            try:
                job = await reads.read(job_id, tenant)
            except JobNotFound:
                return
            public = job_public(job)
            if (state := (public.status, public.progress, public.progress_detail)) != seen:
                seen = state
                yield public
            if job.status.is_terminal:
                return
            await events.changed(changed, SAFETY_POLL_S)
