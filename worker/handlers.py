"""Job kind -> a call into the blip2 library, over a LIST of jobs so that several can share one pass.

Every handler takes a batch of `Work` (a typed input and its decoded images) whose options agree
(see `batch_key`) and returns one output per item, in order. Today the task passes batches of one;
gathering several queued jobs into one forward pass only has to group them by `batch_key`.

The blip2 operations are imported inside each handler: they import torch, which the worker's
parent process (it forks the children that run jobs) must never load.
"""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from PIL.Image import Image

from jobs.schemas import (
    CaptionInput,
    CaptionOutput,
    DecodingInput,
    EmbedInput,
    EmbedOutput,
    InstructInput,
    InstructOutput,
    JobInput,
    JobKind,
    JobOutput,
    MatchInput,
    MatchOutput,
    MatchScoreOutput,
    VqaInput,
    VqaOutput,
)

if TYPE_CHECKING:
    from blip2.decoding import DecodingOptions
    from blip2.loading import LoadedModel

InputT = TypeVar("InputT", bound=JobInput)


@dataclass(frozen=True)
class Work(Generic[InputT]):
    """One job's typed input and the images it names, decoded, in order (image_id, then image_ids)."""

    input: InputT
    images: list[Image]


def _decoding(defaults: "DecodingOptions", requested: DecodingInput) -> "DecodingOptions | None":
    """The model's defaults for the operation with the request's options applied (None: all defaults)."""
    overrides = requested.overrides()
    return defaults.with_overrides(**overrides) if overrides else None


def run_caption(lm: "LoadedModel", batch: Sequence[Work[CaptionInput]]) -> list[CaptionOutput]:
    from blip2.caption import caption

    first = batch[0].input
    results = caption(
        lm,
        [w.images[0] for w in batch],
        prompts=[w.input.prompt for w in batch],
        style=first.style,
        decoding=_decoding(lm.spec.caption_defaults, first.decoding),
    )
    return [CaptionOutput(captions=r.captions) for r in results]


def run_vqa(lm: "LoadedModel", batch: Sequence[Work[VqaInput]]) -> list[VqaOutput]:
    from blip2.vqa import QAExample, answer

    first = batch[0].input
    results = answer(
        lm,
        [w.images[0] for w in batch],
        [w.input.question for w in batch],
        examples=[QAExample(question=e.question, answer=e.answer) for e in first.examples],
        decoding=_decoding(lm.spec.vqa_defaults, first.decoding),
    )
    return [VqaOutput(answer=r.text) for r in results]


def run_instruct(lm: "LoadedModel", batch: Sequence[Work[InstructInput]]) -> list[InstructOutput]:
    from blip2.instruct import instruct

    first = batch[0].input
    results = instruct(
        lm,
        [w.images[0] for w in batch],
        [w.input.instruction for w in batch],
        decoding=_decoding(lm.spec.instruct_defaults, first.decoding),
    )
    return [InstructOutput(text=r.text) for r in results]


def run_embed(lm: "LoadedModel", batch: Sequence[Work[EmbedInput]]) -> list[EmbedOutput]:
    from blip2.features import extract_features

    mode = batch[0].input.mode
    images = [w.images[0] for w in batch] if mode != "text" else None
    texts = [str(w.input.text) for w in batch] if mode != "image" else None
    features = extract_features(lm, images=images, texts=texts, mode=mode)
    return [EmbedOutput(embedding=f.embedding, dim=f.dim, query_embeddings=f.query_embeddings) for f in features]


def run_match(lm: "LoadedModel", batch: Sequence[Work[MatchInput]]) -> list[MatchOutput]:
    # Each match already scores many candidates in one pass; jobs are not merged further.
    return [MatchOutput(scores=_match_one(lm, work)) for work in batch]


def _match_one(lm: "LoadedModel", work: Work[MatchInput]) -> list[MatchScoreOutput]:
    from blip2.matching import rank_images, rank_texts

    job = work.input
    if job.texts is not None:
        scores = rank_texts(lm, work.images[0], job.texts, top_k=job.top_k)
    else:
        scores = rank_images(lm, str(job.text), work.images, top_k=job.top_k)
    return [MatchScoreOutput(index=s.index, itc=s.itc, itm=s.itm) for s in scores]


Handler = Callable[["LoadedModel", Sequence[Work[Any]]], Sequence[JobOutput]]
HANDLERS: dict[JobKind, Handler] = {
    "caption": run_caption,
    "vqa": run_vqa,
    "instruct": run_instruct,
    "embed": run_embed,
    "match": run_match,
}


def batch_key(kind: JobKind, job_input: JobInput) -> Hashable:
    """Jobs of one model with equal keys may run as one batch: they share every batch-wide option."""
    shared: dict[JobKind, Callable[[Any], Hashable]] = {
        "caption": lambda i: (i.style, _frozen(i.decoding)),
        "vqa": lambda i: (tuple((e.question, e.answer) for e in i.examples), _frozen(i.decoding)),
        "instruct": lambda i: _frozen(i.decoding),
        "embed": lambda i: i.mode,
        "match": lambda i: None,  # run_match takes each job in turn
    }
    return (kind, shared[kind](job_input))


def _frozen(decoding: DecodingInput) -> Hashable:
    return tuple(sorted(decoding.overrides().items()))


def run_batch(kind: JobKind, lm: "LoadedModel", batch: Sequence[Work[Any]]) -> list[JobOutput]:
    """Run a batch of one kind, checking the handler answered once per job."""
    outputs = list(HANDLERS[kind](lm, batch))
    if len(outputs) != len(batch):
        raise RuntimeError(f"{kind} handler returned {len(outputs)} results for {len(batch)} jobs")
    return cast(list[JobOutput], outputs)
