"""The messages of jobs that already ended in this worker, acknowledged by its main process unread.

A batch runs the jobs of many messages, and most of those messages reach the worker after the batch
that ran their jobs. Handed to the job process one at a time through Celery's pool, each would cost a
round trip between the two processes, and the next job's message would wait behind all of them: on a
2-core machine the 15 such messages a batch of 16 left took 49 ms (median) before the next batch
could be claimed, while the model idled; dropped by the main process, 17 ms.

So the job process tells the main process, through a pipe opened before the pool forks it, which jobs
ended in its batches (`EndedHere.tell`), and the main process's strategy for inference tasks
(`DropEndedHere`, Celery's `Task.Strategy`) acknowledges their messages as they arrive, unread. That is
safe for the same reason as in the job process (worker/batches.py): an ended job is never queued again,
and every queued job has a message of its own (one whose message ran other jobs first is sent
another). Whatever the pipe could not carry (it is full when the main process falls behind) reaches
the job process as before, which drops it there.
"""

import logging
import os
import select
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from celery.worker.strategy import default as default_strategy

from jobs.recent_jobs import RecentJobs

log = logging.getLogger(__name__)

_ID_BYTES = 16
_IDS_PER_WRITE = select.PIPE_BUF // _ID_BYTES  # a pipe write of at most PIPE_BUF bytes is never split
_READ_BYTES = 4096 * _ID_BYTES  # a multiple of the id size: a read never splits an id either


class EndedHere:
    """Job ids that ended in the job process's batches, on their way to the worker's main process."""

    def __init__(self, kept: int = 8192) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # inherited by the forked pool
        self.heard = RecentJobs(kept)

    def tell(self, job_ids: Iterable[UUID]) -> None:
        """In the job process: these jobs ended here. Never blocks: a full pipe keeps the rest."""
        ids = [job_id.bytes for job_id in job_ids]
        for start in range(0, len(ids), _IDS_PER_WRITE):
            try:
                os.write(self._write_fd, b"".join(ids[start : start + _IDS_PER_WRITE]))
            except BlockingIOError:
                return

    def ended_here(self, job_id: UUID) -> bool:
        """In the main process: whether the job process said this job ended there."""
        self._hear()
        return job_id in self.heard

    def _hear(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, _READ_BYTES)
            except BlockingIOError:
                return
            self.heard.add(UUID(bytes=data[at : at + _ID_BYTES]) for at in range(0, len(data), _ID_BYTES))

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


class DropEndedHere:
    """A Celery task strategy: the message of a job that ended here is acknowledged at once; any other
    goes on through Celery's default strategy to the pool."""

    def __init__(self, ended: EndedHere) -> None:
        self.ended = ended

    def __call__(self, task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        handle = default_strategy(task, app, consumer, **kwargs)
        connection_errors = consumer.connection_errors

        def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
            job_id = _job_id(message)
            if job_id is None or not self.ended.ended_here(job_id):
                return handle(message, body, ack, reject, callbacks, **more)
            log.info("message for job %s: nothing queued for it (the job ended here already)", job_id)
            ack(log, connection_errors)
            return None

        return on_message


def _job_id(message: Any) -> UUID | None:
    """The message's job: its task id (jobs/broker.py sends each job's message with the job's id)."""
    try:
        return UUID(str((message.headers or {})["id"]))
    except (KeyError, TypeError, ValueError):
        return None
