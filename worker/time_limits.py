"""A batch killed at its hard time limit fails its jobs with `time_limit_exceeded`, as the soft limit does.

At the soft limit the jobs' own process raises SoftTimeLimitExceeded and records the failures
(worker/batches.py). A batch deaf to it (stuck in a native call, a frozen process) is killed at the
hard limit by the worker's main process, which acknowledges the message (Celery's acks_on_timeout),
and nothing in the killed process is left to write. So the main process fails every job the task's
claim took (its `batch_id`: below), on Celery's `task_failure` signal. Without it the rows would
stay `running` until their lease ran out and the sweeper would run them again, each run killed at
the same limit, until MAX_ATTEMPTS turned them into `worker_lost` failures.

A claim's `batch_id` is its message's task id and the worker's node name (`claim_id`): a task id
alone is the job's id, which a message sent again (by the sweeper, or redelivered by Redis after
its visibility timeout) shares with the first, and the two may run at once on two workers, each
claiming a batch of its own. Killing one must not fail the other's.

The write runs in a thread of its own with a short-lived engine: the main process must not block
its event loop on Postgres, nor hold connections across the forks of new children. If the write
fails, the sweeper's lease still recovers the job.

The pool forks the killed child's replacement at about the moment that thread writes and sends the
dashboard's events, and a fork copies whatever lock the thread holds just then (the app's producer
pool, a connection pool's) held for ever in the child, which hangs on it before it ever loads its
model: once, in CI, the worker took no job for three minutes after a hard timeout. So a fork waits
for a write in progress to end (`_WRITING`, taken around the write and around every fork).
"""

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import celeryd_after_setup, task_failure

from jobs.db import create_db_engine, create_session_factory, session_scope
from jobs.repository import fail_batch
from jobs.settings import Settings
from worker.events import TaskEvents

log = logging.getLogger(__name__)

# Held while a hard-limit write is in progress, and by every fork of this process while it forks.
_WRITING = threading.Lock()
os.register_at_fork(before=_WRITING.acquire, after_in_parent=_WRITING.release, after_in_child=_WRITING.release)


def claim_id(node: str, task_id: str) -> str:
    """The `batch_id` of the claim a task's run makes: its task id on this worker node."""
    return f"{task_id}@{node}"


def record_hard_time_limits(app: Celery, settings: Settings) -> None:
    """Fail the job of any of `app`'s tasks killed at its hard time limit (connect once per worker app)."""

    last_task_id = ""  # Celery signals one hard timeout twice (on the timeout, then on the failed result)
    node = ""
    events = TaskEvents(app, hostname="")

    def on_setup(sender: str = "", **_: Any) -> None:
        nonlocal events, node
        node = sender  # the worker's node name: the claims' and the dashboard's events'
        events = TaskEvents(app, hostname=sender)

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
        batch_id = claim_id(node, task_id)
        thread = threading.Thread(target=_fail, args=(settings, events, batch_id, limit), name=f"time-limit-{task_id}")
        thread.start()

    task_failure.connect(on_task_failure, weak=False)
    celeryd_after_setup.connect(on_setup, weak=False)


def _fail(settings: Settings, events: TaskEvents, batch_id: str, limit: object) -> None:
    with _WRITING:
        _write_failure(settings, events, batch_id, limit)


def _write_failure(settings: Settings, events: TaskEvents, batch_id: str, limit: object) -> None:
    log.warning("batch %s killed at the hard time limit (%s s)", batch_id, limit)
    engine = create_db_engine(settings)
    message = f"the job ran past the hard time limit ({limit} s)"
    try:
        with session_scope(create_session_factory(engine)) as session:
            failed = fail_batch(session, batch_id, "time_limit_exceeded", message)
        log.warning("batch %s: %d jobs failed at the hard time limit", batch_id, len(failed))
        events.ended(failed, runtime_s=float(limit) if isinstance(limit, int | float) else 0.0)
    except Exception:
        log.exception("batch %s: its time limit could not be recorded; the sweeper will recover it", batch_id)
    finally:
        engine.dispose()
