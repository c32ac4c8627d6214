"""Database work retried through an outage, on a real Postgres behind sessions that first fail to connect."""

import signal
from collections.abc import Iterator

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from jobs.db import SessionFactory
from tests.support.flaky_sessions import FlakySessions
from worker import db_retry
from worker.db_retry import retry_transaction


@pytest.fixture
def flaky(sessions: SessionFactory, request: pytest.FixtureRequest) -> Iterator[FlakySessions]:
    """Sessions whose first `request.param` (default 3) cannot connect."""
    made = FlakySessions(sessions, failures=getattr(request, "param", 3))
    yield made
    made.close()


def test_a_transaction_is_retried_until_the_database_answers(flaky: FlakySessions) -> None:
    assert retry_transaction(flaky, lambda s: s.scalar(text("SELECT 42")), what="a test", limit_s=30) == 42
    assert flaky.calls == flaky.failures + 1


@pytest.mark.parametrize("flaky", [0], indirect=True)
def test_other_database_errors_are_not_retried(flaky: FlakySessions) -> None:
    with pytest.raises(ProgrammingError):
        retry_transaction(flaky, lambda s: s.execute(text("SELECT no_such_column")), what="a test", limit_s=30)
    assert flaky.calls == 1


class Clock:
    """The retry loop's clock, advanced only by its own sleeps: the test sees the waits it would make,
    whatever the time each try takes on a loaded machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("flaky", [1000], indirect=True)
def test_retrying_gives_up_after_its_limit(flaky: FlakySessions, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(db_retry, "time", clock)
    with pytest.raises(OperationalError):
        retry_transaction(flaky, lambda s: s.scalar(text("SELECT 1")), what="a test", limit_s=5)
    # Tries after 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s of backing off; the next would start past the limit.
    assert flaky.calls == 6
    assert clock.now <= 5, "it waited past its limit"


@pytest.mark.parametrize("flaky", [0], indirect=True)
def test_a_soft_time_limit_in_the_middle_of_a_query_is_not_taken_for_an_outage(flaky: FlakySessions) -> None:
    """Celery's soft limit is a signal whose handler raises SoftTimeLimitExceeded wherever the job is;
    landing in a query, it breaks the connection mid-command and the rollback fails like an outage.
    The limit is what stopped the job: it is raised, and nothing is tried again."""

    def soft_limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_limit)
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # the query below takes a minute: the signal lands inside it
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            retry_transaction(flaky, lambda s: s.execute(text("SELECT pg_sleep(60)")), what="a test", limit_s=30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert flaky.calls == 1
