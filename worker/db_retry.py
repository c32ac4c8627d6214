"""Database work a worker keeps trying while Postgres is briefly away (a restart, a failover).

A job's claim, the reads it starts with and above all its final write are retried on connection
errors, backing off from 0.1 s to 2 s between tries, for up to DB_RETRY_S: a job that finished its
model work while Postgres was down keeps its result. Any other error is raised at once. Each try
is a transaction of its own on a fresh session (a connection error empties the pool, so dead
connections are replaced), and every write is a conditional transition, so a try whose commit did
land before the connection broke is not applied twice: the next try matches no row.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from jobs.db import SessionFactory, database_error_summary, is_connection_error, session_scope

log = logging.getLogger(__name__)

T = TypeVar("T")
_FIRST_DELAY_S = 0.1
_MAX_DELAY_S = 2.0


def retry_transaction(sessions: SessionFactory, work: Callable[[Session], T], *, what: str, limit_s: float) -> T:
    """`work(session)` in a committed transaction, retried in a new one after each connection error
    until it succeeds or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    delay = _FIRST_DELAY_S
    while True:
        try:
            with session_scope(sessions) as session:
                return work(session)
        except Exception as exc:
            _raise_time_limit(exc)
            if not is_connection_error(exc) or time.monotonic() + delay > deadline:
                raise
            summary = database_error_summary(exc)
            log.warning("%s: database unreachable (%s); trying again in %.1f s", what, summary, delay)
        time.sleep(delay)
        delay = min(2 * delay, _MAX_DELAY_S)


def _raise_time_limit(exc: BaseException) -> None:
    """The soft time limit, if it is what broke the transaction.

    A soft limit that lands while a query is in flight leaves the connection mid-command, and the
    rollback then fails with an OperationalError that reads like an outage ("another command is
    already in progress"). Retried, the job would run on to the hard limit; it is the limit that
    stopped it, so that is what is raised.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, SoftTimeLimitExceeded):
            raise cause
        cause = cause.__context__
