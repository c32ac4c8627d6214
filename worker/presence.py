"""A worker's presence on the queues it alone serves (a tenant's trained model): announced once its
model is loaded, refreshed every HEARTBEAT_INTERVAL_S for a lease (JOB_LEASE_S), withdrawn when the
process stops. Killed, the process leaves a row that expires a lease later (jobs/presence.py)."""

import logging
import os
import socket
import threading
from datetime import timedelta

from jobs.db import SessionFactory, database_error_summary, session_scope
from jobs.presence import announce, withdraw
from jobs.settings import Settings

log = logging.getLogger(__name__)


class Presence:
    """Keeps one process's presence rows alive from a daemon thread while it runs."""

    def __init__(self, sessions: SessionFactory, queues: list[str], settings: Settings) -> None:
        self._sessions = sessions
        self._queues = queues
        self._interval_s = settings.HEARTBEAT_INTERVAL_S
        self._ttl = timedelta(seconds=settings.JOB_LEASE_S)
        self.worker = f"{socket.gethostname()}/{os.getpid()}"
        self._stop = threading.Event()

    def start(self) -> None:
        """Announce the queues now (the caller learns at once if it cannot), then keep them announced."""
        self._announce()
        threading.Thread(target=self._beat, name="presence", daemon=True).start()
        log.info("serving %s as %s", ", ".join(self._queues), self.worker)

    def stop(self) -> None:
        """Withdraw at once, so new jobs go to the base model's workers without waiting for the expiry."""
        self._stop.set()
        try:
            with session_scope(self._sessions) as session:
                withdraw(session, self.worker)
        except Exception as exc:
            log.warning("presence not withdrawn (%s); it expires by itself", database_error_summary(exc))

    def _announce(self) -> None:
        with session_scope(self._sessions) as session:
            announce(session, self._queues, self.worker, self._ttl)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._announce()
            except Exception as exc:  # never let the thread die: the queue would look dead a lease later
                log.warning("presence not refreshed (%s); trying again", database_error_summary(exc))
