"""Waking whoever waits on a job the moment it changes: one LISTEN connection per API process.

The same connection hears `api_key_changes` (a key revoked; migration 0007) and tells the process's
KeyCache (api/key_cache.py), which is trusted only while this connection is up.

The jobs table's trigger NOTIFYs channel `job_events` with "<job id> <status>" whenever a job's
status or progress changes (migration 0004), whoever changed it: a worker, a cancel, the sweeper;
" webhook" follows for a job that has one (migration 0008), to wake the webhook deliverer.
One connection per API process LISTENs and wakes the long-polls and event streams waiting on that
job, so a finished job is answered at once and nobody reads Postgres in a loop.

If the connection drops (Postgres restarting), it is opened again with backoff; meanwhile waiters
read their job every `FALLBACK_POLL_S`, and even while connected every `SAFETY_POLL_S`, so a
notification lost in a reconnect delays an answer by seconds, never forever.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from uuid import UUID

import psycopg

from api.key_cache import KeyCache
from jobs.recent_jobs import RecentJobs
from jobs.status import JobStatus

log = logging.getLogger(__name__)

CHANNEL = "job_events"
KEY_CHANNEL = "api_key_changes"
FALLBACK_POLL_S = 0.5  # while the listener is not connected
SAFETY_POLL_S = 5.0  # while it is
_MAX_BACKOFF_S = 5.0
# How many of the latest terminal notifications are remembered, for a waiter that subscribes just
# after its job may have ended (a submission that then waits on its job): seconds of history at any
# throughput the API takes, for a few hundred kilobytes.
_FINISHED_REMEMBERED = 8192
_TERMINAL = frozenset(status.value for status in JobStatus if status.is_terminal)


class JobEvents:
    """The process's listener, and the jobs being waited on (each with the events of its waiters)."""

    def __init__(self, database_url: str | None, keys: KeyCache | None = None) -> None:
        self._url = database_url
        self._keys = keys if keys is not None else KeyCache()
        # Each watched job's waiters: their event, and whether only its end wakes them.
        self._waiters: dict[UUID, dict[asyncio.Event, bool]] = {}
        self._finished = RecentJobs(_FINISHED_REMEMBERED)
        self.connected = False
        # Set whenever a job with a webhook becomes terminal: wakes the webhook deliverer (api/main.py).
        self.webhook_due = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watching(self, job_id: UUID, *, ends_only: bool = False) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the job changes (`ends_only`: when it reaches a terminal status, as
        a long-poll waits for); enter it before reading the job, so no change is missed."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, {})[event] = ends_only
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id, {})
            waiters.pop(event, None)
            if not waiters:
                self._waiters.pop(job_id, None)

    def ended_lately(self, job_id: UUID) -> bool:
        """Whether a notification said the job ended, among the latest this process heard; False while
        the listener is down (nothing is heard then)."""
        return job_id in self._finished

    async def changed(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait until `event` is set or `timeout_s` (shorter while the listener is down) has passed; clear it."""
        limit = min(timeout_s, SAFETY_POLL_S if self.connected else FALLBACK_POLL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(limit, 0))
        event.clear()

    async def listen_forever(self) -> None:
        """LISTEN and wake waiters, reconnecting with backoff; runs until cancelled."""
        if not self._url:
            return
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                backoff = 0.1 if self.connected else min(backoff * 2, _MAX_BACKOFF_S)
                self.connected = False
                self._keys.go_dark()
                log.warning("job event listener disconnected (%s); reconnecting in %.1f s", exc, backoff)
            await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        assert self._url is not None
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as connection:
            await connection.execute(f"LISTEN {CHANNEL}")
            await connection.execute(f"LISTEN {KEY_CHANNEL}")
            self.connected = True
            self._keys.go_live()
            self._wake_all()  # anything that changed while we were away
            async for notice in connection.notifies():
                if notice.channel == KEY_CHANNEL:
                    self._keys.forget(notice.payload)
                else:
                    self._wake(notice.payload)

    def _wake(self, payload: str) -> None:
        job_id_text, status, *flags = [*payload.split(" "), ""]
        try:
            job_id = UUID(job_id_text)
        except ValueError:
            return
        ended = status in _TERMINAL
        for event, ends_only in self._waiters.get(job_id, {}).items():
            if ended or not ends_only:
                event.set()
        if ended:
            self._finished.add([job_id])
            if "webhook" in flags:
                self.webhook_due.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
        self.webhook_due.set()
