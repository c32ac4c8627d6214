"""A running job's link to its row: progress, heartbeats, and whether it should stop.

Long jobs report progress every step; writes are throttled so a fast loop does not hammer
Postgres. Every write is also a heartbeat, and answers whether the job is still running: a
cancel turns the next answer to False, and the job stops at its next step. While Postgres is
unreachable these writes are skipped and the job goes on: a blip in the database must not fail or
orphan a job that is otherwise running fine. So is a report Postgres refuses: a lost report costs
one step's numbers, never the job (NaN and infinite losses are stored as null: jobs/outputs.py).
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from jobs.db import SessionFactory, database_error_summary, is_connection_error, session_scope
from jobs.models import Attempt
from jobs.outputs import ProgressDetail
from jobs.repository import heartbeat, report_progress
from worker import soft_limit

log = logging.getLogger(__name__)


@dataclass
class JobProgress:
    """Progress reporting and cancellation for one running job."""

    attempt: Attempt
    sessions: SessionFactory
    min_interval_s: float = 1.0  # at most one progress write, and one cancel check, a second
    _last_report: float = float("-inf")
    _last_check: float = float("-inf")
    _running: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, fraction: float, detail: ProgressDetail, *, force: bool = False) -> None:
        """Record progress (throttled, except the first, the last, and when `force`d); notes a cancel."""
        now = time.monotonic()
        if not force and fraction < 1.0 and now - self._last_report < self.min_interval_s:
            return
        data = detail.model_dump(mode="json")
        self._write(lambda session: report_progress(session, self.attempt, fraction, data))
        self._last_report = self._last_check = now

    def should_stop(self) -> bool:
        """True once the job was canceled (asks Postgres at most once a second). Raises the soft time
        limit if it fired in the last step, swallowed there (worker/soft_limit.py)."""
        soft_limit.check()
        now = time.monotonic()
        if now - self._last_check >= self.min_interval_s:
            self._write(lambda session: bool(heartbeat(session, [self.attempt])))
            self._last_check = now
        return not self._running

    def _write(self, write: Callable[[Session], bool]) -> None:
        """One progress write or cancel check; skipped, keeping the last answer, while Postgres is unreachable,
        or when it refuses a value of the report (a report is lost, not the job)."""
        try:
            with self._lock, session_scope(self.sessions) as session:
                self._running = write(session)
        except DataError as exc:
            summary = database_error_summary(exc)
            log.warning("job %s: progress not recorded, Postgres refused it (%s)", self.attempt.job_id, summary)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            summary = database_error_summary(exc)
            log.warning("job %s: progress not recorded, database unreachable (%s)", self.attempt.job_id, summary)


class Heartbeat:
    """The attempts a thread keeps alive: jobs join as a batch gathers them, and drop out once the
    database says they no longer run (canceled, or taken for lost)."""

    def __init__(self, attempts: Iterable[Attempt]) -> None:
        self._attempts = set(attempts)
        self._lock = threading.Lock()

    def add(self, attempts: Iterable[Attempt]) -> None:
        with self._lock:
            self._attempts.update(attempts)

    def beat(self, session: Session) -> bool:
        """Refresh every live attempt's heartbeat; False once none is left."""
        with self._lock:
            current = list(self._attempts)
        alive = set(heartbeat(session, current))
        with self._lock:
            self._attempts -= set(current) - alive
            return bool(self._attempts)


@contextmanager
def heartbeating(attempts: Iterable[Attempt], sessions: SessionFactory, interval_s: float) -> Iterator[Heartbeat]:
    """Refresh the jobs' heartbeats every `interval_s` from a thread while the block runs, so a job
    whose worker dies is noticed within the lease and run again, however long it legitimately runs."""
    beats = Heartbeat(attempts)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_s):
            try:
                with session_scope(sessions) as session:
                    if not beats.beat(session):
                        return
            except Exception as exc:
                # Never let the thread die: a job whose beats stop is taken for lost and run a second time.
                log.warning("heartbeat not written (%s); trying again", database_error_summary(exc))

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield beats
    finally:
        done.set()
        thread.join(timeout=interval_s + 5)
