"""bench.service's share of the time the model ran: the passes of the jobs that finished in a stretch,
by Postgres's clock, and none from before or after it."""

from bench.harness import database_now, model_seconds, postgres
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.repository import Outcome, add_job, claim_jobs, succeed_jobs
from jobs.settings import Settings


def _ran(sessions: SessionFactory, seconds: list[float]) -> None:
    """Jobs claimed as one batch and succeeded, each with its share of the pass."""
    with session_scope(sessions) as session:
        jobs = [add_job(session, tenant="t", kind=JobKind.CAPTION, model="m", queue="q", input={}) for _ in seconds]
    with session_scope(sessions) as session:
        claimed = claim_jobs(session, [job.id for job in jobs], "batch")
        outcomes = {job.attempt: Outcome({"captions": []}, s) for job, s in zip(claimed, seconds, strict=True)}
        succeed_jobs(session, outcomes)


def test_it_adds_up_the_passes_of_the_jobs_that_finished_in_the_stretch(
    settings: Settings, sessions: SessionFactory, empty_tables: None
) -> None:
    with postgres(settings) as db:
        _ran(sessions, [5.0])  # before the stretch
        since = database_now(db)
        _ran(sessions, [0.25, 0.25])
        _ran(sessions, [0.125])
        until = database_now(db)
        _ran(sessions, [7.0])  # after it
        assert model_seconds(db, since, until) == 0.625
        assert model_seconds(db, until, database_now(db)) == 7.0
