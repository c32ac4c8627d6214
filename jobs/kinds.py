"""Every kind of job in one table: its input, its result, where it runs, what it reports, what it batches on.

    spec = KINDS[JobKind.CAPTION]
    spec.parse(stored_input)     # a CaptionInput
    spec.queue("shapes-blip2")   # "infer.shapes-blip2"

The API builds its request and response schemas from this table (jobs/schemas.py), submission routes
and checks jobs by it, and the worker dispatches on it (worker/handlers.py holds one handler per
inference kind, worker/long_jobs.py one per long kind). Adding a kind is one entry here and one handler.
"""

import hashlib
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from blip2.registry import Family
from jobs.inputs import (
    CaptionInput,
    DownloadInput,
    EmbedInput,
    EvaluateInput,
    GeneratingInput,
    InstructInput,
    JobInput,
    MatchInput,
    TrainInput,
    VqaInput,
)
from jobs.outputs import (
    CaptionOutput,
    DownloadOutput,
    DownloadProgressDetail,
    EmbedOutput,
    EvaluateOutput,
    EvaluateProgressDetail,
    InstructOutput,
    JobOutput,
    MatchOutput,
    ProgressDetail,
    TrainOutput,
    TrainProgressDetail,
    VqaOutput,
)
from jobs.queues import Lane, queue_for_model

InputT = TypeVar("InputT", bound=JobInput)


class JobKind(StrEnum):
    """What a job does; stored as its string value."""

    CAPTION = "caption"
    VQA = "vqa"
    INSTRUCT = "instruct"
    EMBED = "embed"
    MATCH = "match"
    DOWNLOAD = "download"
    TRAIN = "train"
    EVALUATE = "evaluate"


# Why a model of a family cannot run an input (None: it can). Unknown families (a hub id not yet
# loaded) are never refused here; the library refuses them when the job runs.
Refusal = Callable[[Family, Any], str | None]


@dataclass(frozen=True)
class KindSpec(Generic[InputT]):
    """One kind of job: the row of the table."""

    kind: JobKind
    input: type[InputT]
    output: type[JobOutput]
    lane: Lane
    # What every job in one batch must share (options that apply to the whole forward pass); None: runs alone.
    shared_options: Callable[[InputT], Hashable] | None = None
    progress: type[ProgressDetail] | None = None  # what a long kind reports while it runs
    refuse: Refusal | None = None

    @property
    def long(self) -> bool:
        """Runs for minutes to hours on a queue of its own, reporting progress."""
        return self.lane is not Lane.INFERENCE

    @property
    def task_name(self) -> str:
        """The Celery task its messages name (what Flower lists)."""
        return f"blip2.{self.kind.value}"

    def queue(self, model: str) -> str:
        """The queue of a job of this kind for `model`: the model's own, or the lane's."""
        return queue_for_model(model) if self.lane is Lane.INFERENCE else self.lane.value

    def parse(self, data: object) -> InputT:
        """The typed input of a stored job of this kind."""
        return self.input.model_validate(data)

    def refusal(self, family: Family | None, job_input: JobInput) -> str | None:
        """Why a model of `family` cannot run this input, or None."""
        return None if family is None or self.refuse is None else self.refuse(family, job_input)

    def needs_retrieval_model(self, job_input: JobInput) -> bool:
        """Whether only a retrieval model (family itm) can run this input, as the refusals say."""
        return self.refusal(Family.ITM, job_input) is None and self.refusal(Family.OPT, job_input) is not None

    def batch_cost(self, job_input: JobInput) -> int:
        """How many rows of a batch this job takes: the sequences it generates side by side (beams or samples)."""
        if isinstance(job_input, GeneratingInput):
            return job_input.decoding.sequences_per_input
        return 1


def _generates(family: Family, _: JobInput) -> str | None:
    return family.cannot_generate()


def _embeds(family: Family, job_input: EmbedInput) -> str | None:
    return family.cannot_embed(job_input.mode)


def _matches(family: Family, _: JobInput) -> str | None:
    return family.cannot_match()


def _trains_task(family: Family, job_input: TrainInput | EvaluateInput) -> str | None:
    if job_input.task == "match":
        return _matches(family, job_input)
    return _generates(family, job_input)


KINDS: dict[JobKind, KindSpec[Any]] = {
    spec.kind: spec
    for spec in (
        KindSpec(
            JobKind.CAPTION,
            CaptionInput,
            CaptionOutput,
            Lane.INFERENCE,
            shared_options=lambda i: (i.style, i.decoding.frozen()),
            refuse=_generates,
        ),
        KindSpec(
            JobKind.VQA,
            VqaInput,
            VqaOutput,
            Lane.INFERENCE,
            shared_options=lambda i: (tuple((e.question, e.answer) for e in i.examples), i.decoding.frozen()),
            refuse=_generates,
        ),
        KindSpec(
            JobKind.INSTRUCT,
            InstructInput,
            InstructOutput,
            Lane.INFERENCE,
            shared_options=lambda i: i.decoding.frozen(),
            refuse=_generates,
        ),
        KindSpec(
            JobKind.EMBED, EmbedInput, EmbedOutput, Lane.INFERENCE, shared_options=lambda i: i.mode, refuse=_embeds
        ),
        # Match jobs batch by direction: jobs that rank texts against the same image encode it once.
        KindSpec(
            JobKind.MATCH,
            MatchInput,
            MatchOutput,
            Lane.INFERENCE,
            shared_options=lambda i: i.texts is not None,
            refuse=_matches,
        ),
        KindSpec(JobKind.DOWNLOAD, DownloadInput, DownloadOutput, Lane.DOWNLOAD, progress=DownloadProgressDetail),
        KindSpec(JobKind.TRAIN, TrainInput, TrainOutput, Lane.TRAIN, progress=TrainProgressDetail, refuse=_trains_task),
        KindSpec(
            JobKind.EVALUATE,
            EvaluateInput,
            EvaluateOutput,
            Lane.TRAIN,
            progress=EvaluateProgressDetail,
            refuse=_trains_task,
        ),
    )
}


def spec_of(kind: JobKind | str) -> KindSpec[Any]:
    """The table's row for a kind."""
    return KINDS[JobKind(kind)]


def batch_key(kind: JobKind, job_input: JobInput, model: str, model_owner: str) -> str | None:
    """Jobs with equal keys may run as one batch: same kind, same model, same batch-wide options.

    `model_owner` is the tenant for a tenant's trained model ("" for a registry model, which every
    tenant's jobs share). None for kinds that always run alone.
    """
    spec = KINDS[kind]
    if spec.shared_options is None:
        return None
    shared = [kind.value, model, model_owner, spec.shared_options(job_input)]
    return hashlib.sha256(json.dumps(shared, default=repr).encode()).hexdigest()[:32]
