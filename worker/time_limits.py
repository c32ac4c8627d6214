"""A job killed at its hard time limit fails with `time_limit_exceeded`, as one stopped at the soft limit does.

At the soft limit the job's own process raises SoftTimeLimitExceeded and records the failure
(worker/tasks.py). A job deaf to it (stuck in a native call, a frozen process) is killed at the hard
limit by the worker's main process, which acknowledges the message (Celery's acks_on_timeout), and
nothing in the killed process is left to write. So the main process records the failure, on
Celery's `task_failure` signal. Without it the row would stay `running` until its lease ran out and
the sweeper would run the job again, each run killed at the same limit, until MAX_ATTEMPTS turned
it into a `worker_lost` failure.

The write runs in a thread of its own with a short-lived engine: the main process must not block
its event loop on Postgres, nor hold connections across the forks of new children. If the write
fails, the sweeper's lease still recovers the job.
"""

import logging
import threading
from typing import Any
from uuid import UUID

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure

from jobs.db import create_db_engine, create_session_factory, session_scope
from jobs.repository import fail_job
from jobs.settings import Settings

log = logging.getLogger(__name__)


def record_hard_time_limits(app: Celery, settings: Settings) -> None:
    """Fail the job of any of `app`'s tasks killed at its hard time limit (connect once per worker app)."""

    last_task_id = ""  # Celery signals one hard timeout twice (on the timeout, then on the failed result)

    def on_task_failure(
        sender: Any = None, task_id: str = "", exception: BaseException | None = None, args: Any = (), **_: Any
    ) -> None:
        nonlocal last_task_id
        if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "app", None) is not app or not args:
            return
        if task_id == last_task_id:
            return
        last_task_id = task_id
        limit = exception.args[0] if exception.args else "?"
        job_id = UUID(str(args[0]))
        threading.Thread(target=_fail, args=(settings, job_id, limit), name=f"time-limit-{job_id}").start()

    task_failure.connect(on_task_failure, weak=False)


def _fail(settings: Settings, job_id: UUID, limit: object) -> None:
    log.warning("job %s killed at the hard time limit (%s s)", job_id, limit)
    engine = create_db_engine(settings)
    try:
        with session_scope(create_session_factory(engine)) as session:
            fail_job(session, job_id, "time_limit_exceeded", f"the job ran past the hard time limit ({limit} s)")
    except Exception:
        log.exception("job %s: its time limit could not be recorded; the sweeper will recover it", job_id)
    finally:
        engine.dispose()
