"""A running job's link to its row: progress, heartbeats, and whether it should stop.

Long jobs report progress every step; writes are throttled so a fast loop does not hammer
Postgres. Every write is also a heartbeat, and answers whether the job is still running: a
cancel turns the next answer to False, and the job stops at its next step.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from jobs.db import SessionFactory, session_scope
from jobs.repository import heartbeat, report_progress


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
        with self._lock, session_scope(self.sessions) as session:
            self._running = report_progress(session, self.job_id, fraction, detail)
        self._last_report = self._last_check = now

    def should_stop(self) -> bool:
        """True once the job was canceled (asks Postgres at most once a second)."""
        now = time.monotonic()
        if now - self._last_check >= self.min_interval_s:
            with self._lock, session_scope(self.sessions) as session:
                self._running = heartbeat(session, self.job_id)
            self._last_check = now
        return not self._running


@contextmanager
def heartbeating(job_id: UUID, sessions: SessionFactory, interval_s: float) -> Iterator[None]:
    """Refresh the job's heartbeat every `interval_s` from a thread while the block runs, so a job
    whose worker dies is noticed within the lease and run again, however long it legitimately runs."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval_s):
            with session_scope(sessions) as session:
                if not heartbeat(session, job_id):
                    return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=interval_s + 5)
