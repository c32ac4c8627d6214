"""The worker's Celery configuration, and `run_worker` behind `blip2-jobs worker`.

    blip2-jobs worker --model tiny-opt            # consumes infer.tiny-opt
    blip2-jobs worker --model mine --tenant acme  # acme's trained model: infer.tenant.acme.mine
    blip2-jobs worker --queues train,download     # training, evaluation and downloads

One prefork child (concurrency 1) runs the jobs: it connects and loads the model in
`worker_process_init`, after the fork, and holds the model across jobs, running them in batches of
up to `--batch-size` (worker/batches.py); the main process acknowledges, unread, the messages of jobs
that already ended in the child's batches (worker/ended_here.py). Delivery is at-least-once:
a message is acknowledged only after its job finished (acks_late), is re-queued if the child dies
(reject_on_worker_lost), and Redis re-delivers only after a visibility timeout longer than the hard
time limit, so a job that is still running is never handed to a second worker. A job killed at its
hard time limit is failed by the main process (worker/time_limits.py), not run again.
"""

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import billiard.pool
from celery import Celery
from celery.signals import (
    worker_before_create_process,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from jobs.broker import Dispatcher, create_celery
from jobs.queues import TRAIN_QUEUE, queue_for_model, queue_for_trained
from jobs.settings import Settings
from worker import metrics as worker_metrics
from worker.ended_here import EndedHere
from worker.model_holder import ModelLoadOptions
from worker.runtime import BatchOptions, WorkerRuntime
from worker.tasks import register_tasks
from worker.time_limits import record_hard_time_limits


@dataclass(frozen=True)
class WorkerOptions:
    """What `blip2-jobs worker` was asked for."""

    model: str
    queues: list[str] = field(default_factory=list)  # empty: the model's own queue
    load: ModelLoadOptions = field(default_factory=ModelLoadOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    instance: str = ""  # tells apart several workers of one queue on a host (one per GPU)
    loglevel: str = "INFO"
    tenant: str = ""  # whose trained model `model` is ("": a registry model)

    @property
    def own_queue(self) -> str:
        """The queue of the model: a registry model's, or a trained model's own (announced while alive)."""
        return queue_for_trained(self.tenant, self.model) if self.tenant else queue_for_model(self.model)

    def consumed_queues(self) -> list[str]:
        return self.queues or [self.own_queue]


# billiard makes a job process told to exit wait, up to 300 x 0.1 s, until the main process has read
# its last result. A warm shutdown (SIGTERM) that lands as a task ends never reads it: the main process
# is already joining the pool. Such a stop took 30 s more (py-spy: the child in
# `_ensure_messages_consumed`, the main process in `Pool.join`), twice in one run of the tests, and a
# deploy's `docker stop` would have killed it first. An unread result costs nothing here: the job's
# outcome is in Postgres, and its message, restored to the queue, finds the job ended (worker/batches.py).
_EXIT_WAIT_FOR_RESULT_READ = 10  # x 0.1 s

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings, options: WorkerOptions) -> Celery:
    """The Celery app of one worker, its task registered and its model loaded in the child on start."""
    billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT = _EXIT_WAIT_FOR_RESULT_READ  # inherited by the pool
    app = create_celery(settings)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.TASK_SOFT_TIME_LIMIT_S,
        task_time_limit=settings.TASK_HARD_TIME_LIMIT_S,
        # The child signals "ready" only after loading its model, which takes longer than Celery's 4 s.
        worker_proc_alive_timeout=settings.MODEL_LOAD_TIMEOUT_S,
        worker_pool="prefork",
        worker_concurrency=1,
        # Task events always on, so Flower shows every job however late it starts (worker/events.py).
        worker_send_task_events=True,
    )
    # A worker on `train` / `download` only loads models per job; an inference worker loads its own at start.
    serves_own = options.own_queue in options.consumed_queues()
    runtime = WorkerRuntime(
        settings=settings,
        preload=options.model if serves_own else None,
        load_options=options.load,
        batch=options.batch,
        tenant=options.tenant,
        announced=[options.own_queue] if serves_own and options.tenant else [],
        trains=TRAIN_QUEUE in options.consumed_queues(),
        ended_here=EndedHere(),
        dispatcher=Dispatcher(app),
    )
    register_tasks(app, runtime)
    record_hard_time_limits(app, settings)
    worker_process_init.connect(runtime.start, weak=False)
    worker_process_shutdown.connect(worker_metrics.process_exited, weak=False)
    worker_process_shutdown.connect(runtime.stop, weak=False)
    return app


def worker_argv(options: WorkerOptions) -> list[str]:
    """The `celery worker` arguments for these options."""
    return [
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        f"--queues={','.join(options.consumed_queues())}",
        f"--hostname={options.consumed_queues()[0]}{'-' + options.instance if options.instance else ''}@%h",
        f"--loglevel={options.loglevel}",
        "--without-mingle",
    ]


def run_worker(settings: Settings, options: WorkerOptions) -> None:
    """Run a worker in this process until it is stopped (SIGTERM: finish the current job, then exit)."""
    app = create_worker_app(settings, options)
    libraries = ModelLibraries()
    worker_before_create_process.connect(libraries.before_fork, weak=False)
    worker_ready.connect(libraries.import_in_background, weak=False)
    app.worker_main(worker_argv(options))


class ModelLibraries:
    """torch and transformers' BLIP-2 code, imported in the worker's main process once it is ready,
    so that a job process that replaces another (after a hard time limit, a crash or an out-of-memory
    kill) inherits them and loads only its model: 1 s instead of 7.5 s on a 2-core machine
    (`python -m bench.recovery`).

    The first job process imports them itself, as before: importing them in the main process before
    the first fork would make a new worker's start serial, its own start-up no longer side by side
    with the child's import. In the background, the import never holds up the main process's work, and every fork
    waits for it to finish (`before_fork`): a process forked in the middle of an import would inherit
    the import's lock, held by a thread it does not have. The import starts only where the pool says
    when it forks, as Celery's prefork pool on an event loop (Redis) does.
    """

    def __init__(self) -> None:
        self._forks_announced = False
        self._thread: threading.Thread | None = None

    def before_fork(self, **_signal: Any) -> None:
        self._forks_announced = True
        if self._thread is not None:
            self._thread.join()

    def import_in_background(self, **_signal: Any) -> None:
        if self._forks_announced and self._thread is None:
            self._thread = threading.Thread(target=_import_model_libraries, name="import-model-libraries", daemon=True)
            self._thread.start()


def _import_model_libraries() -> None:
    try:
        import blip2.loading  # noqa: F401  (torch, transformers' models and processors)
    except Exception as exc:  # each job process imports them itself, as it would without this
        log.warning("torch and transformers not imported ahead of job processes: %s: %s", type(exc).__name__, exc)
