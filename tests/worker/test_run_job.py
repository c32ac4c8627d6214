"""The worker process: runs jobs once, fails bad ones with a code, and lives on."""

import base64
import io
import re
import unicodedata
from pathlib import Path
from uuid import uuid4

import pytest
from PIL import Image

from blip2.registry import Registry
from jobs.broker import Dispatcher, JobMessage
from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.queues import queue_for_model
from jobs.repository import add_job, cancel_job, get_job
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import Submission, submit_job
from tests.support.auth import TENANT
from tests.support.fixtures import worker_fixture
from tests.support.images import png_base64
from tests.support.waiting import wait_terminal, wait_until

worker = worker_fixture("module")
pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def ctx(sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings) -> Submission:
    return Submission(sessions=sessions, dispatcher=dispatcher, registry=Registry.load(), settings=settings)


def request(kind: str, model: str, **job_input: object) -> JobCreateBase:
    body = {"kind": kind, "model": model, "input": {"image": png_base64()} | job_input, "cache": False}
    return JOB_CREATE_ADAPTER.validate_python(body)


def test_a_job_runs_to_its_result(ctx: Submission) -> None:
    job = submit_job(ctx, TENANT, request("caption", "tiny-opt", decoding={"max_new_tokens": 5, "num_beams": 2})).job
    done = wait_terminal(ctx.sessions, job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert isinstance(done.result, dict) and len(done.result["captions"]) == 1
    assert done.attempts == 1 and done.started_at and done.finished_at


def test_its_log_says_what_model_it_loaded_and_how_long_it_took_without_warnings(ctx: Submission, worker: Path) -> None:
    """The load is two INFO lines; transformers' progress bar (which Celery logged as WARNING lines,
    one per redraw) is off."""
    job = submit_job(ctx, TENANT, request("caption", "tiny-opt", decoding={"max_new_tokens": 2, "num_beams": 1})).job
    assert wait_terminal(ctx.sessions, job.id).status is JobStatus.SUCCEEDED
    log = worker.read_text()
    assert re.search(r"INFO/ForkPoolWorker-\d+\] model loaded in \d+\.\d s: \{'name': 'tiny-opt'", log), log[-3000:]
    assert "Loading weights" not in log
    assert [line for line in log.splitlines() if "WARNING/" in line and ("it/s]" in line or "%|" in line)] == []


def test_duplicate_delivery_runs_once(ctx: Submission, dispatcher: Dispatcher, worker: Path) -> None:
    job = submit_job(ctx, TENANT, request("vqa", "tiny-t5", question="what colour?")).job
    dispatcher.send(JobMessage.of(job))  # the broker delivers the same message again
    dispatcher.send(JobMessage.of(job))
    done = wait_terminal(ctx.sessions, job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
    assert isinstance(done.result, dict) and isinstance(done.result["answer"], str)
    # A marker job behind the duplicates: once it is done, the duplicates have been handled too. A
    # message claims whatever is next on its queue, so a duplicate still waiting may run the marker,
    # and then the marker's own message finds nothing: two empty claims either way, one run each.
    marker = submit_job(ctx, TENANT, request("vqa", "tiny-t5", question="and now?")).job
    assert wait_terminal(ctx.sessions, marker.id).attempts == 1
    with session_scope(ctx.sessions) as session:
        assert get_job(session, job.id).attempts == 1

    # Four messages, two jobs: two messages found nothing to run (the marker's, if a duplicate claimed it).
    def empty_claims() -> list[int]:
        log = worker.read_text()
        return [log.count(f"message for job {one.id}: nothing queued") for one in (job, marker)]

    wait_until(lambda: sum(empty_claims()) >= 2, "two empty claims", 60)
    assert sum(empty_claims()) == 2, f"empty claims for the job and the marker: {empty_claims()}"


def test_model_error_fails_the_job_and_the_worker_lives_on(ctx: Submission, dispatcher: Dispatcher) -> None:
    # Submission refuses text embeddings of a captioning model; a row that got past it (written before
    # that check, or by hand) still fails cleanly in the worker.
    with session_scope(ctx.sessions) as session:
        wrong = add_job(session, tenant=TENANT, kind=JobKind.EMBED, model="tiny-opt",
                        queue=queue_for_model("tiny-opt"), input={"mode": "text", "text": "a cat"})  # fmt: skip
    dispatcher.send(JobMessage.of(wrong))
    failed = wait_terminal(ctx.sessions, wrong.id)
    assert (failed.status, failed.error_code) == (JobStatus.FAILED, "unsupported_operation")
    assert failed.error_message
    after = submit_job(
        ctx,
        TENANT,
        request("instruct", "tiny-instruct", instruction="describe it", decoding={"max_new_tokens": 5, "num_beams": 1}),
    ).job
    assert wait_terminal(ctx.sessions, after.id).status is JobStatus.SUCCEEDED


def test_canceled_job_never_runs(ctx: Submission, dispatcher: Dispatcher) -> None:
    with session_scope(ctx.sessions) as session:
        job = add_job(
            session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue=queue_for_model("tiny-opt"), input={}
        )
        cancel_job(session, job.id, TENANT)
    dispatcher.send(JobMessage.of(job))
    marker = submit_job(ctx, TENANT, request("caption", "tiny-opt", decoding={"max_new_tokens": 3})).job
    wait_terminal(ctx.sessions, marker.id)
    with session_scope(ctx.sessions) as session:
        assert (get_job(session, job.id).status, get_job(session, job.id).attempts) == (JobStatus.CANCELED, 0)


def test_message_without_a_row_is_dropped(ctx: Submission, dispatcher: Dispatcher, worker: Path) -> None:
    ghost = uuid4()
    dispatcher.send(JobMessage(ghost, queue_for_model("tiny-opt"), JobKind.CAPTION, "tiny-opt"))
    marker = submit_job(ctx, TENANT, request("caption", "tiny-opt", decoding={"max_new_tokens": 3})).job
    assert wait_terminal(ctx.sessions, marker.id).status is JobStatus.SUCCEEDED
    assert f"message for job {ghost}: nothing queued" in worker.read_text()


def test_match_ranks_texts(ctx: Submission) -> None:
    job = submit_job(ctx, TENANT, request("match", "tiny-itm", texts=["a red square", "a dog", "a tree"], top_k=2)).job
    done = wait_terminal(ctx.sessions, job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error_message
    assert isinstance(done.result, dict)
    scores = done.result["scores"]
    assert len(scores) == 2 and {s["index"] for s in scores} <= {0, 1, 2}


def test_generated_control_characters_never_reach_a_result(ctx: Submission, photos: dict[str, Image.Image]) -> None:
    """tiny-opt captions the cat at 640x427 with NULs among its tokens; Postgres refuses NUL in JSON,
    which once left such a job running until its lease ran out, then failed it the same way again.
    The text is cleaned: the job succeeds at once, with none of those characters in its result."""
    buffer = io.BytesIO()
    photos["chelsea"].convert("RGB").resize((640, 427)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    job = submit_job(ctx, TENANT, request("caption", "tiny-opt", image=image)).job
    done = wait_terminal(ctx.sessions, job.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 1), done.error_message
    assert done.result is not None and done.result["captions"][0]
    caption = done.result["captions"][0]
    assert not [c for c in caption if unicodedata.category(c) == "Cc" and c not in "\t\n"], repr(caption)
