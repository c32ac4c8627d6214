"""A running job's link to its row: progress, heartbeats, and whether it should stop.

Long jobs report progress every step; writes are throttled so a fast loop does not hammer
Postgres. Every write is also a heartbeat, and answers whether the job is still running: a
cancel turns the next answer to False, and the job stops at its next step. While Postgres is
unreachable these writes are skipped and the job goes on: a blip in the database must not fail or
orphan a job that is otherwise running fine.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy.orm import Session

from jobs.db import SessionFactory, database_error_summary, is_connection_error, session_scope
from jobs.repository import heartbeat, report_progress

log = logging.getLogger(__name__)


@dataclass
class JobProgress:
    """Progress reporting and cancellation for one running job."""

    job_id: UUID
    sessions: SessionFactory
    min_interval_s: float = 1.0  # at most one progress write, and one cancel check, a second
    _last_report: float = float("-inf")
    _last_check: float = float("-inf")
    _running: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, fraction: float, detail: dict[str, Any], *, force: bool = False) -> None:
        """Record progress (throttled, except the first, the last, and when `force`d); notes a cancel."""
        now = time.monotonic()
        if not force and fraction < 1.0 and now - self._last_report < self.min_interval_s:
            return
        self._write(lambda session: report_progress(session, self.job_id, fraction, detail))
        self._last_report = self._last_check = now

    def should_stop(self) -> bool:
        """True once the job was canceled (asks Postgres at most once a second)."""
        now = time.monotonic()
        if now - self._last_check >= self.min_interval_s:
            self._write(lambda session: heartbeat(session, self.job_id))
            self._last_check = now
        return not self._running

    def _write(self, write: Callable[[Session], bool]) -> None:
        """One progress write or cancel check; skipped, keeping the last answer, while Postgres is unreachable."""
        try:
            with self._lock, session_scope(self.sessions) as session:
                self._running = write(session)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            summary = database_error_summary(exc)
            log.warning("job %s: progress not recorded, database unreachable (%s)", self.job_id, summary)


@contextmanager
def heartbeating(job_id: UUID, sessions: SessionFactory, interval_s: float) -> Iterator[None]:
    """Refresh the job's heartbeat every `interval_s` from a thread while the block runs, so a job
    whose worker dies is noticed within the lease and run again, however long it legitimately runs."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_s):
            try:
                with session_scope(sessions) as session:
                    if not heartbeat(session, job_id):
                        return
            except Exception as exc:
                # Never let the thread die: a job whose beats stop is taken for lost and run a second time.
                log.warning("job %s: heartbeat not written (%s); trying again", job_id, database_error_summary(exc))

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=interval_s + 5)
