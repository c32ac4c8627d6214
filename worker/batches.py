"""Running inference jobs in batches: claim, gather, prepare, run as one pass, record.

    ended = run_batch_for(runtime, message_job_id, batch_id, queue=the_message_queue)

0. A message whose job ended in one of this process's batches is dropped unread (the most common case:
   a batch runs the jobs of many messages, and theirs arrive after it). The worker's main process drops
   most of them before they get here (worker/ended_here.py).
1. **Claim** the next batch on the message's queue (jobs/claims.py): the head job (interactive before
   batch priority, tenants in fair share) and the queued jobs that may share its forward pass, in the
   same fair order, as many as fit `--batch-size`. A message whose own job was passed over sends it a
   message again.
2. **Gather**: while the batch has room, wait up to `--batch-wait-ms` for more to arrive.
3. **Prepare** each job: its typed input and its images, each distinct image decoded once. A job
   whose image will not decode fails alone; the rest of the batch goes on.
4. **Run** the kind's handler over the batch, one pass. If it fails, each job runs again alone, so one
   bad item fails alone; if it runs out of memory, the batch is halved and each half tried again.
5. **Record** every result in one statement, each with its share of the batch's model time
   (`worker_seconds`, split by the rows each job took: the tenant's usage). If Postgres refuses one
   (nothing should: generated text is cleaned), each is written alone and a result that cannot be
   stored fails its job at once.

A job stays claimed by this run (its attempt) throughout: heartbeats keep its lease, and every write
names the attempt, so a run that lost its job (canceled, or taken for lost) changes nothing.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from PIL.Image import Image
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from blip2 import fitting
from blip2.errors import Blip2Error
from blip2.images import decode_image
from jobs.broker import JobMessage
from jobs.claims import BatchRules, claim_batch, claim_more, queue_of
from jobs.db import is_connection_error
from jobs.errors import JobsError
from jobs.image_store import load_images
from jobs.inputs import JobInput
from jobs.kinds import KINDS, JobKind
from jobs.models import Attempt, Job
from jobs.outputs import JobOutput
from jobs.recent_jobs import RecentJobs
from jobs.repository import Outcome, fail_job, send_again_if_queued, succeed_jobs
from worker import soft_limit
from worker.db_retry import retry_transaction
from worker.decoded_images import Key
from worker.handlers import Work, run_batch
from worker.progress import heartbeating
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")
_GATHER_POLL_S = 0.002
_PARSED_KEPT = 4096  # jobs whose parsed input is kept: a few batches' worth, and their mates seen in claims
_PARSED: dict[UUID, "JobInput | JobError"] = {}
# Jobs that ended in a batch of this process: their own messages, which mostly arrive after the batch
# that ran them, then return at once. An ended job never runs again (no state leads back to queued),
# and every job still queued has a message of its own (`_claim`), so such a message has nothing to start.
_ENDED = RecentJobs(4096)


def _ignore(jobs: list[Job]) -> None:
    """No one to tell of claimed jobs."""


@dataclass(frozen=True)
class JobError:
    """Why one job failed: a stable code and a message."""

    code: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> "JobError":
        if isinstance(exc, Blip2Error | JobsError):
            return cls(exc.code, str(exc))
        if isinstance(exc, SoftTimeLimitExceeded):
            return cls("time_limit_exceeded", "the job ran past the soft time limit")
        if is_out_of_memory(exc):
            return cls("out_of_memory", f"out of memory even alone: {exc}")
        return cls("internal_error", f"{type(exc).__name__}: {exc}")


@dataclass
class Item:
    """One claimed job of the batch, and once prepared, its work (or why it could not be prepared)."""

    job: Job
    work: Work[Any] | None = None
    error: JobError | None = None
    output: JobOutput | None = None
    worker_seconds: float | None = None  # its share of the batch's model time

    @property
    def attempt(self) -> Attempt:
        return self.job.attempt


@dataclass
class Batch:
    """The jobs one claim took: one kind, one model, one set of batch-wide options."""

    batch_id: str
    items: list[Item] = field(default_factory=list)

    @property
    def jobs(self) -> list[Job]:
        return [item.job for item in self.items]


def run_batch_for(
    runtime: WorkerRuntime,
    message_job: UUID,
    batch_id: str,
    on_claimed: Callable[[list[Job]], None] = _ignore,
    queue: str | None = None,
) -> list[Job]:
    """Run the next batch on the queue of `message_job`'s message; the batch's jobs as they ended
    (empty when nothing was queued: the message's job ran in another batch, or was canceled).
    `queue` is the queue the message came from, when the broker says (else the job's row is read for
    it). `on_claimed` hears of the jobs as they are claimed (the dashboard's events)."""
    if message_job in _ENDED:
        log.info("message for job %s: nothing queued for it (the job ended here already)", message_job)
        return []
    batch = _claim(runtime, message_job, batch_id, queue)
    if not batch.items:
        log.info("message for job %s: nothing queued to run", message_job)
        return []
    started = time.monotonic()
    with heartbeating([i.attempt for i in batch.items], runtime.sessions, runtime.settings.HEARTBEAT_INTERVAL_S) as hb:
        _gather(runtime, batch)
        hb.add(i.attempt for i in batch.items)
        on_claimed(batch.jobs)
        try:
            _prepare(runtime, batch)
            _execute(runtime, batch)
            soft_limit.check()  # it fired, and whatever ran then swallowed it (worker/soft_limit.py)
        except SoftTimeLimitExceeded as exc:
            _fail_unfinished(batch, JobError.of(exc))
    try:
        written = _record(runtime, batch)
    except SoftTimeLimitExceeded:  # it fired while the outcomes were being written: they are known, write them
        written = _record(runtime, batch)
    log.info("batch of %d %s jobs in %.2f s", len(batch.items), batch.jobs[0].kind, time.monotonic() - started)
    ended = _as_they_ended(runtime, batch, written)
    _remember_ended(runtime, [job.id for job in ended if job.status.is_terminal])
    return ended


def _remember_ended(runtime: WorkerRuntime, job_ids: list[UUID]) -> None:
    """Remember the jobs that ended here, and tell the main process, which drops their messages first
    (worker/ended_here.py); those it misses come here."""
    _ENDED.add(job_ids)
    if runtime.ended_here is not None:
        runtime.ended_here.tell(job_ids)


# ---- claim and gather -----------------------------------------------------------------------


def _rules(runtime: WorkerRuntime) -> BatchRules:
    def cost(job: Job) -> int:
        job_input = _parsed(job)
        return 1 if isinstance(job_input, JobError) else KINDS[job.kind].batch_cost(job_input)

    max_wait = timedelta(seconds=runtime.settings.BATCH_PRIORITY_MAX_WAIT_S)
    return BatchRules(batch_size=runtime.batch.size, cost=cost, batch_max_wait=max_wait)


def _parsed(job: Job) -> "JobInput | JobError":
    """The job's typed input, or why its stored input is not one (a row written by hand, or by an older
    version): such a job fails alone, and the queue goes on, rather than every claim failing on it.

    Parsed once per job in this process: a batch asks for it while it is claimed, gathered, prepared and
    its time shared, and a job's input never changes once it is written."""
    if (kept := _PARSED.get(job.id)) is not None:
        return kept
    try:
        parsed: JobInput | JobError = KINDS[job.kind].parse(job.input)
    except ValidationError as exc:
        parsed = JobError("invalid_input", f"the stored input is not a {job.kind.value} input: {exc}")
    _PARSED[job.id] = parsed
    while len(_PARSED) > _PARSED_KEPT:
        del _PARSED[next(iter(_PARSED))]  # the oldest first (dicts keep their order)
    return parsed


def _claim(runtime: WorkerRuntime, message_job: UUID, batch_id: str, message_queue: str | None) -> Batch:
    """Claim the next batch. If it is of other jobs (they come first in fair order: interactive before
    batch priority, another tenant's turn) and the message's own job is still queued, that job gets a
    message again: its own was spent on this batch, and the messages of the jobs this batch runs are
    dropped unread once they end here. Every queued job keeps a message of its own, so none waits for
    the sweeper (a job stranded so waited QUEUED_TOO_LONG_S). Each such message goes with a batch run,
    so none loops."""
    dispatcher = runtime.dispatcher

    def claim(session: Session) -> tuple[list[Job], JobMessage | None]:
        queue = message_queue or queue_of(session, message_job)
        jobs = [] if queue is None else claim_batch(session, queue, batch_id, _rules(runtime))
        passed_over = bool(jobs) and all(job.id != message_job for job in jobs)
        again = send_again_if_queued(session, message_job) if passed_over and dispatcher is not None else None
        return jobs, again

    jobs, again = _transaction(runtime, "claiming a batch", claim)
    if again is not None and dispatcher is not None:
        log.info("job %s waits behind the jobs its message ran; it has a message again", message_job)
        dispatcher.try_send(again)
    return Batch(batch_id, [Item(job) for job in jobs])


def _gather(runtime: WorkerRuntime, batch: Batch) -> None:
    """Wait up to the batch wait for more jobs of the batch's kind and options, while it has room."""
    head = batch.jobs[0]
    if head.batch_key is None or head.attempts > 1:
        return
    room = _rules(runtime).room(head) - len(batch.items)
    wait_s = runtime.batch.wait_s(runtime.last_pass_s.get((head.model, head.kind.value)))
    poll_s = max(_GATHER_POLL_S, wait_s / 20)
    deadline = time.monotonic() + wait_s
    while room > 0 and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        more = _transaction(runtime, "gathering", _claim_more(head, batch.batch_id, room, _rules(runtime)))
        batch.items += [Item(job) for job in more]
        room -= len(more)


def _claim_more(head: Job, batch_id: str, room: int, rules: BatchRules) -> Callable[[Session], list[Job]]:
    key = head.batch_key or ""
    return lambda session: claim_more(session, head.queue, key, batch_id, room, rules)


# ---- prepare and run ------------------------------------------------------------------------


def _prepare(runtime: WorkerRuntime, batch: Batch) -> None:
    """Each job's typed input and decoded images; a job whose image is missing or will not decode fails alone."""
    inputs = {item.job.id: _parsed(item.job) for item in batch.items}
    for item in batch.items:
        parsed = inputs[item.job.id]
        item.error = parsed if isinstance(parsed, JobError) else None
    valid = {job_id: i for job_id, i in inputs.items() if not isinstance(i, JobError)}
    wanted = {
        (image_id, job.tenant)
        for job in batch.jobs
        if job.id in valid
        for image_id in valid[job.id].referenced_image_ids()
    }
    decoded: dict[tuple[UUID, str], Image | JobError] = {}
    for key in wanted:
        if (kept := runtime.images.get(key)) is not None:
            decoded[key] = kept
    missing = wanted - decoded.keys()
    stored = _transaction(runtime, "loading images", lambda s: load_images(s, missing)) if missing else {}
    for key in missing:
        if key[0] in stored:
            decoded[key] = _decoded(runtime, key, stored[key[0]])
    for item in batch.items:
        if item.error is None:
            _prepare_item(item, valid[item.job.id], decoded)


def _decoded(runtime: WorkerRuntime, key: tuple[UUID, str], data: bytes) -> "Image | JobError":
    """The stored image decoded (and kept for the next job that asks for it), or why it will not decode."""
    try:
        image = decode_image(data, max_pixels=runtime.settings.MAX_IMAGE_PIXELS)
    except Blip2Error as exc:
        return JobError.of(exc)
    except Exception as exc:  # a decoder's own bug or out of memory: still this image's jobs' alone
        log.exception("image %s: decoding failed unexpectedly", key[0])
        return JobError.of(exc)
    runtime.images.put(key, image)
    return image


def _prepare_item(item: Item, job_input: JobInput, decoded: dict[tuple[UUID, str], "Image | JobError"]) -> None:
    images: list[Image] = []
    for image_id in job_input.referenced_image_ids():
        missing = JobError("unknown_image", f"no uploaded image with id {image_id}")
        image = decoded.get((image_id, item.job.tenant), missing)
        if isinstance(image, JobError):
            item.error = image
            return
        images.append(image)
    item.work = Work(input=job_input, images=images)


def _execute(runtime: WorkerRuntime, batch: Batch) -> None:
    ready = [item for item in batch.items if item.work is not None and item.error is None]
    if not ready:
        return
    head = ready[0].job
    if (model := _loaded(runtime, batch, head)) is None:
        return
    started = time.monotonic()
    try:
        if _fitted(runtime, batch, model, ready):
            _run_isolating(head.kind, model, ready)
    finally:  # a soft time limit too: the time was spent
        seconds = time.monotonic() - started
        _share_time(runtime, ready, seconds)
        runtime.last_pass_s[(head.model, head.kind.value)] = seconds


def _loaded(runtime: WorkerRuntime, batch: Batch, head: Job) -> Any:
    """The batch's model; None, every job failed, if it will not load (every job needs it)."""
    try:
        return runtime.models.get(head.model, head.tenant)
    except Exception as exc:
        _fail_every_job(batch, f"loading model {head.model}", exc)
        return None


def _fitted(runtime: WorkerRuntime, batch: Batch, model: Any, items: Sequence[Item]) -> bool:
    """`_fit`; False, every job failed, if it failed (every job needs its images)."""
    try:
        _fit(runtime, model, items)
    except Exception as exc:
        _fail_every_job(batch, "resizing the batch's images", exc)
        return False
    return True


def _fit(runtime: WorkerRuntime, model: Any, items: Sequence[Item]) -> None:
    """Give each job its images resized to the model's input size, from those resized before when the
    worker has them (blip2/fitting.py: the model's processor then computes the same pixels from them,
    and resizes nothing). The same image stays one object across the batch's jobs."""
    size = fitting.target(model.processor.image_processor)
    if size is None:
        return
    cache = runtime.fitted_images
    fitted: dict[tuple[Key, fitting.Target], Image] = {}
    due: dict[tuple[Key, fitting.Target], Image] = {}  # not resized yet
    for item in items:
        assert item.work is not None
        for image_id, image in zip(item.work.input.referenced_image_ids(), item.work.images, strict=True):
            key = ((image_id, item.job.tenant), size)
            if key not in fitted and key not in due:
                kept = cache.get(key)
                if kept is None:
                    due[key] = image
                else:
                    fitted[key] = kept
    for key, image in zip(due, fitting.fit(size, list(due.values())), strict=True):
        fitted[key] = image
        cache.put(key, image)
    for item in items:
        assert item.work is not None
        keys = [((image_id, item.job.tenant), size) for image_id in item.work.input.referenced_image_ids()]
        item.work = Work(input=item.work.input, images=[fitted[key] for key in keys])


def _share_time(runtime: WorkerRuntime, items: Sequence[Item], seconds: float) -> None:
    """Split the batch's model time across its jobs by the rows each took (its usage)."""
    cost = _rules(runtime).cost
    costs = [cost(item.job) for item in items]
    for item, rows in zip(items, costs, strict=True):
        item.worker_seconds = seconds * rows / sum(costs)


def _run_isolating(kind: JobKind, model: Any, items: Sequence[Item]) -> None:
    """Run `items` as one pass; on out of memory halve and try each half, on any other error run each
    alone, so only the jobs at fault fail."""
    try:
        outputs = run_batch(kind, model, [item.work for item in items if item.work is not None])
        soft_limit.check()  # a pass that ended after the limit fails as one stopped by it
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if len(items) == 1:
            if not isinstance(exc, Blip2Error | JobsError):
                log.exception("job %s failed unexpectedly", items[0].job.id)
            items[0].error = JobError.of(exc)
            return
        if is_out_of_memory(exc):
            _release_memory()
            half = len(items) // 2
            log.warning("out of memory with a batch of %d; trying halves of %d", len(items), half)
            _run_isolating(kind, model, items[:half])
            _run_isolating(kind, model, items[half:])
            return
        log.info("a batch of %d failed (%s: %s); running each job alone", len(items), type(exc).__name__, exc)
        for item in items:
            _run_isolating(kind, model, [item])
        return
    for item, output in zip(items, outputs, strict=True):
        item.output = output


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of the device or the host, as torch and Python report them."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail_every_job(batch: Batch, step: str, exc: Exception) -> None:
    """A step every job of the batch needs failed: each unfinished job fails at once, saying which step
    and why, rather than staying running until its lease ends, to fail the same way on every attempt and
    end as `worker_lost`. A time limit, and Postgres out of reach (not the jobs' fault: they run again
    after their lease), go up as they came."""
    if isinstance(exc, SoftTimeLimitExceeded) or is_connection_error(exc):
        raise exc
    error = JobError.of(exc)
    if not isinstance(exc, Blip2Error | JobsError):
        log.exception("batch %s: %s failed; failing its %d jobs", batch.batch_id, step, len(batch.items))
        error = JobError(error.code, f"{step} failed: {type(exc).__name__}: {exc}")
    _fail_unfinished(batch, error)


def _fail_unfinished(batch: Batch, error: JobError) -> None:
    for item in batch.items:
        if item.output is None and item.error is None:
            item.error = error


# ---- record ---------------------------------------------------------------------------------


def _record(runtime: WorkerRuntime, batch: Batch) -> dict[UUID, Job]:
    """Every outcome in one transaction; if Postgres refuses it, each alone (see the module docstring).
    Returns the jobs as written (those this run still held)."""
    jobs = batch.jobs
    what = f"recording job {jobs[0].id}'s result" if len(jobs) == 1 else f"recording {len(jobs)} jobs' results"
    try:
        return _transaction(runtime, what, lambda s: _write(s, batch.items))
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise  # DB_RETRY_S passed: the jobs stay running, and the sweeper runs them again after their lease
        log.warning("a batch's results could not be stored together (%s); storing each alone", exc.orig)
        written: dict[UUID, Job] = {}
        for item in batch.items:
            written |= _record_alone(runtime, item)
        return written


def _record_alone(runtime: WorkerRuntime, item: Item) -> dict[UUID, Job]:
    try:
        return _transaction(runtime, f"recording job {item.job.id}", lambda s: _write(s, [item]))
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise
        item.output, item.error = None, JobError("result_not_storable", f"the result could not be stored: {exc.orig}")
        log.warning("job %s: %s", item.job.id, item.error.message)
        return _transaction(runtime, f"recording job {item.job.id}'s error", lambda s: _write(s, [item]))


def _write(session: Session, items: Sequence[Item]) -> dict[UUID, Job]:
    results = {
        i.attempt: Outcome(i.output.model_dump(mode="json"), i.worker_seconds) for i in items if i.output is not None
    }
    written = {job.id: job for job in succeed_jobs(session, results)}
    for item in items:
        if item.error is not None and (failed := _fail(session, item)) is not None:
            written[failed.id] = failed
    for item in items:
        if item.job.id not in written:
            log.info("job %s: outcome dropped: it no longer runs as attempt %d (canceled, or run again elsewhere)",
                     item.job.id, item.attempt.number)  # fmt: skip
    return written


def _fail(session: Session, item: Item) -> Job | None:
    assert item.error is not None
    return fail_job(session, item.attempt, item.error.code, item.error.message, item.worker_seconds)


def _as_they_ended(runtime: WorkerRuntime, batch: Batch, written: dict[UUID, Job]) -> list[Job]:
    """The batch's jobs as they are now: as written, and read again only for those whose outcome was
    dropped (canceled meanwhile, or taken for lost and run elsewhere)."""
    dropped = [job.id for job in batch.jobs if job.id not in written]
    now = written | ({job.id: job for job in _read(runtime, dropped)} if dropped else {})
    return [now[job.id] for job in batch.jobs if job.id in now]


def _read(runtime: WorkerRuntime, ids: list[UUID]) -> list[Job]:
    def read(session: Session) -> list[Job]:
        return list(session.scalars(select(Job).where(Job.id.in_(ids))))

    return _transaction(runtime, "reading a batch's jobs", read)


def _transaction(runtime: WorkerRuntime, what: str, work: Callable[[Session], T]) -> T:
    """`work` in a transaction of its own, retried for up to DB_RETRY_S while Postgres is unreachable."""
    return retry_transaction(runtime.sessions, work, what=what, limit_s=runtime.settings.DB_RETRY_S)
