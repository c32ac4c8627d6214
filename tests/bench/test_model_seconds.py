"""bench.service's share of the time the model ran: the passes of the jobs that finished in a stretch,
by Postgres's clock, and none from before or after it; and where the time around the passes went."""

from sqlalchemy import func, update

from bench.harness import batch_gaps, database_now, model_seconds, postgres
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Job
from jobs.repository import Outcome, add_job, claim_jobs, succeed_jobs
from jobs.settings import Settings


def _ran(sessions: SessionFactory, seconds: list[float]) -> None:
    """Jobs claimed as one batch and succeeded, each with its share of the pass."""
    with session_scope(sessions) as session:
        jobs = [add_job(session, tenant="t", kind=JobKind.CAPTION, model="m", queue="q", input={}) for _ in seconds]
    with session_scope(sessions) as session:
        claimed = claim_jobs(session, "q", [job.id for job in jobs], "batch")
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


def _batch_at(sessions: SessionFactory, batch: str, claimed: float, ended: float, seconds: list[float]) -> None:
    """A batch's jobs, claimed at `claimed` and finished by `ended` (seconds after the epoch), each with its share."""
    with session_scope(sessions) as session:
        jobs = [add_job(session, tenant="t", kind=JobKind.CAPTION, model="m", queue="q", input={}) for _ in seconds]
    with session_scope(sessions) as session:
        claimed_jobs = claim_jobs(session, "q", [job.id for job in jobs], batch)
        outcomes = {job.attempt: Outcome({"captions": []}, s) for job, s in zip(claimed_jobs, seconds, strict=True)}
        succeed_jobs(session, outcomes)
        session.execute(
            update(Job)
            .where(Job.batch_id == batch)
            .values(started_at=func.to_timestamp(claimed), finished_at=func.to_timestamp(ended))
        )


def test_batch_gaps_are_the_medians_around_and_between_the_passes(
    settings: Settings, sessions: SessionFactory, empty_tables: None
) -> None:
    base = 2_000_000_000.0  # a fixed clock, far from now
    _batch_at(sessions, "a", base, base + 0.100, [0.04, 0.04])  # pass 80 ms, 20 ms around it
    _batch_at(sessions, "b", base + 0.110, base + 0.200, [0.06])  # 10 ms after a; pass 60 ms, 30 around
    _batch_at(sessions, "c", base + 0.230, base + 0.300, [0.05])  # 30 ms after b; pass 50 ms, 20 around
    _batch_at(sessions, "late", base + 10, base + 11, [0.5])  # finished after the stretch
    with postgres(settings) as db:
        gaps = batch_gaps(db, base, base + 1)
    assert gaps.batches == 3
    assert (round(gaps.pass_s, 3), round(gaps.around_pass_s, 3), round(gaps.between_s, 3)) == (0.06, 0.02, 0.02)
