"""What each kind of job gives back (its result), and what a long job reports while it runs (its progress)."""

import math
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, PlainSerializer


def null_unless_finite(value: float | None) -> float | None:
    """A number as JSON can hold it: NaN and infinities become None."""
    return value if value is None or math.isfinite(value) else None


# A measured number that can come out undefined: the loss of a diverging training, a metric over
# nothing. JSON (and so Postgres's jsonb) has no NaN or infinity: such a number is stored and returned
# as null. An embedding or a score that is NaN is a broken model's output, and stays unstorable.
Measure = Annotated[float | None, PlainSerializer(null_unless_finite)]


class JobOutput(BaseModel):
    """Base of every job kind's result."""


class CaptionOutput(JobOutput):
    """A caption job's result: one or more captions, best first."""

    captions: list[str]


class VqaOutput(JobOutput):
    """A VQA job's result."""

    answer: str


class InstructOutput(JobOutput):
    """An instruct job's result."""

    text: str


class EmbedOutput(JobOutput):
    """An embed job's result: the pooled embedding, and per-query-token embeddings where the mode has them."""

    embedding: list[float]
    dim: int
    query_embeddings: list[list[float]] | None = None


class MatchScoreOutput(BaseModel):
    """One ranked candidate: its index in the request, contrastive (itc) and matching (itm) scores."""

    index: int
    itc: float
    itm: float


class MatchOutput(JobOutput):
    """A match job's result, best first."""

    scores: list[MatchScoreOutput]


class DownloadOutput(JobOutput):
    """A download job's result: the registered dataset."""

    dataset: str
    format: str
    tasks: list[str]
    splits: dict[str, int]


class TrainOutput(JobOutput):
    """A training job's result: the new model, servable by name at once, and how it scored."""

    model: str
    steps: int
    final_loss: Measure
    metrics: Mapping[str, Measure]  # a dict; Mapping takes blip2's dict[str, float] as one
    loss_curve: str  # path of the PNG on the workers' and the API's disk, under BLIP2_DATA_DIR
    loss_curve_url: str | None = None  # where the API serves it (absent from results older than the field)
    resumed_from_step: int = 0  # > 0 when a worker died and the job went on from its last checkpoint


class EvaluateOutput(JobOutput):
    """An evaluation job's result: metrics by name (bleu_4, cider, vqa_accuracy, recall@1 ...)."""

    metrics: Mapping[str, Measure]  # a dict; Mapping takes blip2's dict[str, float] as one
    records: int


# ---- progress of long jobs ------------------------------------------------------------------


class ProgressDetail(BaseModel):
    """Base of what a long job reports while it runs, besides its fraction done."""


class DownloadProgressDetail(ProgressDetail):
    """A download's bytes so far (`bytes_total` is None while the server has not said)."""

    bytes_done: int
    bytes_total: int | None
    percent: float | None
    url: str


class TrainProgressDetail(ProgressDetail):
    """Where a training run is: its step, epoch, last loss and learning rate."""

    step: int
    max_steps: int
    epoch: int
    loss: Measure
    lr: float
    val_loss: Measure = None  # on the steps where one was computed
    elapsed_s: float | None = None  # wall time since this run (or resumed run) started


class EvaluateProgressDetail(ProgressDetail):
    """How many records an evaluation has scored."""

    records_done: int
    records_total: int
