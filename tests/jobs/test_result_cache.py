"""The result cache at submission: an identical job is answered from a succeeded one's result, as a
succeeded `cached` row of its own, with no message sent and no place in the tenant's queue; any
difference that could change the result misses."""

import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from blip2.registry import ModelSpec
from jobs.db import session_scope
from jobs.repository import claim_job, count_unfinished_jobs, fail_job, succeed_job
from jobs.result_cache import checkpoint_fingerprint
from jobs.schemas import JOB_CREATE_ADAPTER
from jobs.settings import Settings
from jobs.status import JobStatus
from jobs.submission import Submission, Submitted, submit_job
from tests.support.auth import OTHER_TENANT, TENANT
from tests.support.broker import drain, waiting_job_ids
from tests.support.images import png_base64

pytestmark = pytest.mark.usefixtures("empty_tables")
QUEUE = "infer.tiny-opt"
RESULT = {"captions": ["a red square"]}
RED, BLUE = png_base64(), png_base64(color=(20, 30, 200))


def submit(ctx: Submission, tenant: str = TENANT, image: str = RED, **fields: Any) -> Submitted:
    body = {"kind": "caption", "input": {"image": image, "num_beams": 1, **fields.pop("input", {})}} | fields
    return submit_job(ctx, tenant, JOB_CREATE_ADAPTER.validate_python(body))


def run(ctx: Submission, job_id: UUID, result: dict[str, Any] = RESULT) -> None:
    """Finish a job as a worker would."""
    with session_scope(ctx.sessions) as session:
        claimed = claim_job(session, job_id)
        assert claimed is not None
        succeed_job(session, claimed.attempt, result, worker_seconds=0.25)


def test_an_identical_job_is_answered_from_the_finished_ones_result(ctx: Submission, key_prefix: str) -> None:
    first = submit(ctx).job
    run(ctx, first.id)
    drain(key_prefix, QUEUE)
    again = submit(ctx).job
    assert again.id != first.id, "the cached answer is a job row of its own"
    assert (again.status, again.cached, again.result) == (JobStatus.SUCCEEDED, True, RESULT)
    assert again.finished_at is not None and again.worker_seconds == 0.0
    assert waiting_job_ids(key_prefix, QUEUE) == [], "a message was sent for a job the cache answered"
    with session_scope(ctx.sessions) as session:
        assert count_unfinished_jobs(session, TENANT) == 0


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param({"input": {"num_beams": 2}}, id="another decoding option"),
        pytest.param({"image": BLUE}, id="another image"),
        pytest.param({"input": {"prompt": "a photo of"}}, id="another prompt"),
        pytest.param({"model": "tiny-t5"}, id="another model"),
        pytest.param({"cache": False}, id="cache false"),
        pytest.param({"tenant": OTHER_TENANT}, id="another tenant"),
    ],
)
def test_a_difference_misses(ctx: Submission, key_prefix: str, changed: dict[str, Any]) -> None:
    run(ctx, submit(ctx).job.id)
    job = submit(ctx, **changed).job
    assert (job.status, job.cached) == (JobStatus.QUEUED, False), f"{changed} was answered from the cache"
    assert str(job.id) in waiting_job_ids(key_prefix, job.queue)


def test_sampling_without_a_seed_is_never_cached(ctx: Submission) -> None:
    sampling = {"use_nucleus_sampling": True, "top_p": 0.9}
    first = submit(ctx, input=sampling).job
    assert first.cache_key is None
    run(ctx, first.id)
    assert submit(ctx, input=sampling).job.status is JobStatus.QUEUED, "a random answer was reused"
    seeded = submit(ctx, input=sampling | {"seed": 7}).job
    run(ctx, seeded.id)
    assert submit(ctx, input=sampling | {"seed": 7}).job.cached, "sampling with a seed is repeatable"


def test_only_a_succeeded_job_answers(ctx: Submission) -> None:
    first = submit(ctx).job
    assert submit(ctx).job.status is JobStatus.QUEUED, "a job still queued answered another"
    with session_scope(ctx.sessions) as session:
        claimed = claim_job(session, first.id)
        assert claimed is not None
        fail_job(session, claimed.attempt, "internal_error", "boom")
    assert submit(ctx).job.status is JobStatus.QUEUED, "a failed job answered another"


def test_registry_results_cross_tenants_only_when_the_operator_says_so(ctx: Submission, settings: Settings) -> None:
    run(ctx, submit(ctx).job.id)
    assert not submit(ctx, tenant=OTHER_TENANT).job.cached
    shared = Submission(
        ctx.sessions, ctx.dispatcher, ctx.registry, settings.model_copy(update={"RESULT_CACHE_SHARED": True})
    )
    run(shared, submit(shared).job.id)
    assert submit(shared, tenant=OTHER_TENANT).job.cached


def test_a_cached_answer_is_not_held_to_the_tenant_queue_limit(ctx: Submission, settings: Settings) -> None:
    run(ctx, submit(ctx).job.id)
    full = Submission(
        ctx.sessions, ctx.dispatcher, ctx.registry, settings.model_copy(update={"MAX_UNFINISHED_JOBS_PER_TENANT": 1})
    )
    submit(full, image=BLUE)  # the tenant's one queued job
    assert submit(full).job.cached


def test_the_checkpoint_fingerprint_follows_the_weights(tmp_path: Path, models_dir: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(models_dir / "models" / "tiny-opt", checkpoint)
    spec = ModelSpec(name="mine", checkpoint=str(checkpoint), family=None)
    before = checkpoint_fingerprint(spec)
    assert before is not None and checkpoint_fingerprint(spec) == before
    weights = checkpoint / "model.safetensors"
    replacement = tmp_path / "new.safetensors"
    replacement.write_bytes(weights.read_bytes() + b"\0")
    replacement.rename(weights)  # replaced as checkpoints are: written aside, then renamed in
    assert checkpoint_fingerprint(spec) not in (None, before), "new weights kept the old fingerprint"
    assert checkpoint_fingerprint(ModelSpec(name="gone", checkpoint=str(tmp_path / "gone"), family=None)) is None
    hub = checkpoint_fingerprint(ModelSpec(name="h", checkpoint="Salesforce/blip2-opt-2.7b", family=None))
    assert hub is not None and hub.startswith("hub:Salesforce/blip2-opt-2.7b@")
