"""Inference kind -> a call into the blip2 library, over a batch of jobs that share one pass.

Every handler takes a batch of `Work` (a typed input and its decoded images) whose batch-wide options
agree (jobs/kinds.py: `shared_options`) and returns one output per item, in order. The batch runner
(worker/batches.py) forms the batches; the long kinds have handlers of their own (worker/long_jobs.py).

The blip2 operations are imported inside each handler: they import torch, which the worker's parent
process (it forks the children that run jobs) must never load.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from PIL.Image import Image

from jobs.inputs import CaptionInput, EmbedInput, InstructInput, JobInput, MatchInput, VqaInput
from jobs.kinds import JobKind
from jobs.outputs import CaptionOutput, EmbedOutput, InstructOutput, JobOutput, MatchOutput, MatchScoreOutput, VqaOutput

if TYPE_CHECKING:
    from blip2.loading import LoadedModel
    from blip2.matching import MatchScore

InputT = TypeVar("InputT", bound=JobInput)


@dataclass(frozen=True)
class Work(Generic[InputT]):
    """One job's typed input and the images it names, decoded, in order (image_id, then image_ids).

    Jobs of one batch that name the same image share one decoded object, so it is encoded once.
    """

    input: InputT
    images: list[Image]


def run_caption(lm: "LoadedModel", batch: Sequence[Work[CaptionInput]]) -> list[CaptionOutput]:
    from blip2.caption import caption

    first = batch[0].input
    results = caption(
        lm,
        [w.images[0] for w in batch],
        prompts=[w.input.prompt for w in batch],
        style=first.style,
        decoding=first.decoding.overrides(),
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
        decoding=first.decoding.overrides(),
    )
    return [VqaOutput(answer=r.text) for r in results]


def run_instruct(lm: "LoadedModel", batch: Sequence[Work[InstructInput]]) -> list[InstructOutput]:
    from blip2.instruct import instruct

    first = batch[0].input
    results = instruct(
        lm, [w.images[0] for w in batch], [w.input.instruction for w in batch], decoding=first.decoding.overrides()
    )
    return [InstructOutput(text=r.text) for r in results]


def run_embed(lm: "LoadedModel", batch: Sequence[Work[EmbedInput]]) -> list[EmbedOutput]:
    from blip2.features import extract_features

    mode = batch[0].input.mode
    images = [w.images[0] for w in batch] if mode != "text" else None
    texts = [w.input.text or "" for w in batch] if mode != "image" else None
    features = extract_features(lm, images=images, texts=texts, mode=mode)
    return [EmbedOutput(embedding=f.embedding, dim=f.dim, query_embeddings=f.query_embeddings) for f in features]


def run_match(lm: "LoadedModel", batch: Sequence[Work[MatchInput]]) -> list[MatchOutput]:
    """Match jobs of one direction in one pass: each distinct image and text among them is encoded once."""
    from blip2.matching import ImageRanking, TextRanking, rank_images_many, rank_texts_many

    if batch[0].input.texts is not None:
        requests = [TextRanking(w.images[0], w.input.texts or [], w.input.top_k) for w in batch]
        ranked = rank_texts_many(lm, requests)
    else:
        ranked = rank_images_many(lm, [ImageRanking(w.input.text or "", w.images, w.input.top_k) for w in batch])
    return [MatchOutput(scores=[_score(s) for s in scores]) for scores in ranked]


def _score(score: "MatchScore") -> MatchScoreOutput:
    return MatchScoreOutput(index=score.index, itc=score.itc, itm=score.itm)


Handler = Callable[["LoadedModel", Sequence[Work[Any]]], Sequence[JobOutput]]
# One handler per inference kind (the long kinds' are in worker/long_jobs.py); tests check none is missing.
HANDLERS: dict[JobKind, Handler] = {
    JobKind.CAPTION: run_caption,
    JobKind.VQA: run_vqa,
    JobKind.INSTRUCT: run_instruct,
    JobKind.EMBED: run_embed,
    JobKind.MATCH: run_match,
}


def run_batch(kind: JobKind, lm: "LoadedModel", batch: Sequence[Work[Any]]) -> list[JobOutput]:
    """Run a batch of one kind, checking the handler answered once per job."""
    outputs = list(HANDLERS[kind](lm, batch))
    if len(outputs) != len(batch):
        raise RuntimeError(f"{kind} handler returned {len(outputs)} results for {len(batch)} jobs")
    return outputs
