"""The outbox sweep: re-send jobs left queued too long, recover jobs whose worker died (a running job
whose heartbeat is older than JOB_LEASE_S), and move jobs off the queue of a trained model whose
workers all died (jobs/presence.py) to their base model's queue.

Runs every SWEEP_INTERVAL_S inside the API process (api/main.py); several API processes may sweep
at once, since rows are locked with SKIP LOCKED. A re-sent message that turns out to be a duplicate
is harmless: the worker's claim is a conditional UPDATE, so only one delivery runs the job.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from blip2.registry import Registry
from jobs.broker import Dispatcher, JobMessage
from jobs.db import SessionFactory, session_scope
from jobs.models import Job
from jobs.presence import reroute_orphaned_jobs
from jobs.repository import mark_dispatched, requeue_lost_jobs, take_overdue_queued_jobs, unmark_dispatched
from jobs.settings import Settings

log = logging.getLogger(__name__)

_BATCH = 100


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    recovered: int  # running jobs whose worker died: queued again or failed
    resent: int  # queued jobs whose message was sent again
    rerouted: int = 0  # queued jobs moved off a trained model's queue no worker serves any more


def sweep_once(
    sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, *, recover_lost: bool = True
) -> SweepReport:
    """One pass: recover lost running jobs and re-route jobs of dead queues (unless `recover_lost` is
    False: no worker could say it was alive while Postgres was away), then re-send overdue queued ones."""
    recovered = _recover_lost(sessions, settings) if recover_lost else []
    rerouted = _reroute(sessions, settings) if recover_lost else []
    resent = _send(sessions, dispatcher, recovered + rerouted)
    with session_scope(sessions) as session:
        overdue = take_overdue_queued_jobs(session, after=timedelta(seconds=settings.QUEUED_TOO_LONG_S), limit=_BATCH)
    # Taken and marked as sent, committed, then sent with no row locked (see take_overdue_queued_jobs).
    unsent = [job for job in overdue if not dispatcher.try_send(job.message)]
    if unsent:
        with session_scope(sessions) as session:
            for job in unsent:
                unmark_dispatched(session, job)
    resent += len(overdue) - len(unsent)
    if recovered or resent:
        log.info("sweep: %d lost jobs recovered, %d re-routed, %d messages re-sent", len(recovered), len(rerouted),
                 resent)  # fmt: skip
    return SweepReport(recovered=len(recovered), resent=resent, rerouted=len(rerouted))


def _recover_lost(sessions: SessionFactory, settings: Settings) -> list[Job]:
    lease = timedelta(seconds=settings.JOB_LEASE_S)
    with session_scope(sessions) as session:
        return requeue_lost_jobs(session, lease=lease, max_attempts=settings.MAX_ATTEMPTS)


def _reroute(sessions: SessionFactory, settings: Settings) -> list[Job]:
    registry = Registry.load(settings.BLIP2_MODELS_FILE)
    with session_scope(sessions) as session:
        return reroute_orphaned_jobs(session, registry, limit=_BATCH)


def _send(sessions: SessionFactory, dispatcher: Dispatcher, jobs: list[Job]) -> int:
    """Send messages for jobs whose new state is committed, then mark those sent, in one transaction:
    no row is locked while the messages go out (as for overdue jobs)."""
    sent = [job.id for job in jobs if dispatcher.try_send(JobMessage.of(job))]
    if sent:
        with session_scope(sessions) as session:
            mark_dispatched(session, sent)
    return len(sent)
