"""Database work retried through an outage, on a real Postgres behind sessions that first fail to connect."""

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from jobs.db import SessionFactory
from tests.support.flaky_sessions import FlakySessions
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


@pytest.mark.parametrize("flaky", [1000], indirect=True)
def test_retrying_gives_up_after_its_limit(flaky: FlakySessions) -> None:
    started = time.monotonic()
    with pytest.raises(OperationalError):
        retry_transaction(flaky, lambda s: s.scalar(text("SELECT 1")), what="a test", limit_s=0.5)
    assert 1 < flaky.calls < 10
    assert time.monotonic() - started < 5
