"""The result cache: a job identical to one that already succeeded is answered from its result.

Identical means the same `cache_key`: the kind, the model's name and a fingerprint of its checkpoint,
the images by content (sha256, so an image uploaded twice is one image), and the rest of the input
with its decoding options, seed included. The key is stored on every job that could be answered so
(`jobs.cache_key`); at submission a new job whose key a succeeded job carries becomes a row of its
own, succeeded at once and marked `cached`, with that job's result (jobs/submission.py). No worker
runs it, no message is sent, and it never counts against the tenant's queue.

Never cached: sampling without a seed (`DecodingInput.is_random`: the same request may give another
answer), long jobs (training, evaluation, downloads), a checkpoint that cannot be fingerprinted here
(a local directory the API cannot see), and requests with `cache: false` (they are still keyed, so
their fresh result answers later requests). Keys are per tenant; results of registry models and hub
ids answer every tenant's jobs only when the operator sets RESULT_CACHE_SHARED.

The checkpoint's fingerprint is cheap, and changes when the weights do:
- a local directory: a hash of its config.json and of its files' names, sizes and mtimes (weights,
  tokenizer), remembered per process until the directory's or the config's mtime changes (a file
  replaced by a rename changes the directory's);
- a tenant's trained model: its row (tenant, name, creation time; names are never reused);
- a tiny checkpoint: its name (built offline, deterministically, from a fixed seed);
- a hub id: the id, and the revision the local Hugging Face cache holds when it holds one.
"""

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.orm import Session

from blip2.registry import ModelSpec, is_checkpoint_dir
from jobs.inputs import GeneratingInput, JobInput
from jobs.kinds import KINDS, JobKind
from jobs.models import Job, TrainedModel
from jobs.status import JobStatus

# Where an input names its images; they enter the key by content instead.
_IMAGE_FIELDS = {"image_id", "image_ids", "image", "image_url"}
SHARED_SCOPE = ""  # the scope of keys every tenant's jobs share


def cacheable(kind: JobKind, job_input: JobInput) -> bool:
    """Whether a job's result could answer an identical job: an inference job that is not random."""
    if KINDS[kind].long:
        return False
    return not (isinstance(job_input, GeneratingInput) and job_input.decoding.is_random)


def cache_key(
    *, scope: str, kind: JobKind, model: str, checkpoint: str, job_input: JobInput, image_hashes: Mapping[UUID, str]
) -> str:
    """The key of a job's result: equal for jobs that must give equal results (see the module docstring)."""
    described = {
        "scope": scope,
        "kind": kind.value,
        "model": model,
        "checkpoint": checkpoint,
        "images": [image_hashes[image_id] for image_id in job_input.referenced_image_ids()],
        "input": job_input.model_dump(mode="json", exclude_none=True, exclude=_IMAGE_FIELDS),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def cached_result(session: Session, key: str) -> dict[str, Any] | None:
    """The result of the latest succeeded job with this key, or None."""
    query = (
        select(Job.result)
        .where(Job.cache_key == key, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc())
        .limit(1)
    )
    return session.scalar(query)


# ---- checkpoint fingerprints ----------------------------------------------------------------


def trained_fingerprint(model: TrainedModel) -> str:
    """A tenant's trained model: its row, written once by its training job."""
    return f"trained:{model.tenant}/{model.name}@{model.created_at.isoformat()}"


def checkpoint_fingerprint(spec: ModelSpec) -> str | None:
    """What identifies a registry model's or a hub id's weights; None when they cannot be identified here."""
    if spec.tiny:
        return f"tiny:{spec.checkpoint}"
    path = Path(spec.checkpoint).expanduser()
    if is_checkpoint_dir(path):
        config_mtime = (path / "config.json").stat().st_mtime_ns
        return _directory_fingerprint(str(path.resolve()), path.stat().st_mtime_ns, config_mtime)
    if path.is_absolute() or spec.checkpoint.startswith((".", "~")):
        return None  # a local checkpoint this process cannot see
    revision = _cached_hub_revision(spec.checkpoint)
    return f"hub:{spec.checkpoint}@{revision or 'unknown'}"


@functools.lru_cache(maxsize=256)
def _directory_fingerprint(directory: str, _mtime_ns: int, _config_mtime_ns: int) -> str:
    """Hash of config.json and of every file's name, size and mtime (weights, tokenizer ...); the
    mtimes in the arguments are there to forget the answer once the directory or its config changes."""
    path = Path(directory)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"dir:{digest.hexdigest()}"


def _cached_hub_revision(hub_id: str) -> str | None:
    """The commit of the hub id's `main` in the local Hugging Face cache, if it was downloaded here."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None
