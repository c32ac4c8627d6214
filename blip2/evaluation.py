"""Evaluating a model on a dataset split: run the operation on every record, score the outputs.

    evaluate(lm, records, "caption")  # {"bleu_4": 0.41, "cider": 1.32, "exact_match": 0.05}
    evaluate(lm, records, "vqa")      # {"vqa_accuracy": 0.78}
    evaluate(lm, records, "match")    # {"i2t_recall@1": ..., "recall@1": ..., "itm_accuracy": ...}

Captions and answers come from the library's own `caption` and `answer` (the model's default
decoding unless `decoding` is given), so the scores are those of what the service returns.
Retrieval ranks every caption of the split for every image (and back) by ITC + ITM, the sum
LAVIS ranks its retrieval benchmark by; `recall@K` is the mean of the two directions.
`itm_accuracy` is how often the ITM probability alone is on the right side of 0.5 (`match_accuracy`).
Images are decoded one batch at a time, so a large split needs no more memory than a batch.
"""

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL.Image import Image

from blip2.caption import caption
from blip2.data.records import CaptionRecord, Task, VqaRecord
from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument
from blip2.images import load_image_file
from blip2.loading import LoadedModel
from blip2.matching import score_matrix
from blip2.metrics import caption_scores, match_accuracy, retrieval_recall, vqa_accuracy
from blip2.vqa import answer

Progress = Callable[[int, int], None]  # (records done, records in all)
R = TypeVar("R", CaptionRecord, VqaRecord)


def evaluate(
    lm: LoadedModel,
    records: Sequence[CaptionRecord | VqaRecord],
    task: str,
    *,
    batch_size: int = 16,
    decoding: DecodingOptions | None = None,
    on_progress: Progress | None = None,
) -> dict[str, float]:
    """The task's metrics for `lm` on `records` (CaptionRecords for caption and match, VqaRecords for vqa)."""
    chosen = _task(task)
    if batch_size < 1:
        raise InvalidArgument("batch_size must be at least 1")
    report = on_progress or (lambda done, total: None)
    if chosen is Task.CAPTION_VQA:  # both, each on its own kind of record
        caption_records = [r for r in records if isinstance(r, CaptionRecord)]
        vqa_records = [r for r in records if isinstance(r, VqaRecord)]
        scores = _caption_metrics(
            lm, _records_of(caption_records, CaptionRecord, Task.CAPTION), batch_size, decoding, report
        )
        return scores | _vqa_metrics(lm, _records_of(vqa_records, VqaRecord, Task.VQA), batch_size, decoding, report)
    if chosen is Task.CAPTION:
        return _caption_metrics(lm, _records_of(records, CaptionRecord, chosen), batch_size, decoding, report)
    if chosen is Task.VQA:
        return _vqa_metrics(lm, _records_of(records, VqaRecord, chosen), batch_size, decoding, report)
    return _match_metrics(lm, _records_of(records, CaptionRecord, chosen), batch_size, report)


def _task(task: str) -> Task:
    try:
        return Task(task)
    except ValueError as exc:
        raise InvalidArgument(f"unknown task {task!r}; use caption, vqa, caption_vqa or match") from exc


def _records_of(records: Sequence[object], kind: type[R], task: Task) -> list[R]:
    if not records:
        raise InvalidArgument(f"no records to evaluate {task.value} on")
    if not all(isinstance(r, kind) for r in records):
        raise InvalidArgument(f"{task.value} evaluation needs {kind.__name__}s")
    return list(records)  # type: ignore[arg-type]


def _outputs_in_batches(
    records: list[R], batch_size: int, report: Progress, run: Callable[[list[Image], list[R]], list[str]]
) -> list[str]:
    """`run` on each batch of decoded images and their records; the outputs, in record order."""
    outputs: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        outputs += run([load_image_file(r.image_path) for r in batch], batch)
        report(len(outputs), len(records))
    return outputs


def _caption_metrics(
    lm: LoadedModel, records: list[CaptionRecord], batch_size: int, decoding: DecodingOptions | None, report: Progress
) -> dict[str, float]:
    def first_captions(images: list[Image], _: list[CaptionRecord]) -> list[str]:
        return [result.captions[0] for result in caption(lm, images, decoding=decoding)]

    hypotheses = _outputs_in_batches(records, batch_size, report, first_captions)
    return caption_scores(hypotheses, [r.captions for r in records])


def _vqa_metrics(
    lm: LoadedModel, records: list[VqaRecord], batch_size: int, decoding: DecodingOptions | None, report: Progress
) -> dict[str, float]:
    def answers(images: list[Image], batch: list[VqaRecord]) -> list[str]:
        return [a.text for a in answer(lm, images, [r.question for r in batch], decoding=decoding)]

    predictions = _outputs_in_batches(records, batch_size, report, answers)
    return {"vqa_accuracy": vqa_accuracy(predictions, [r.answers for r in records])}


def _match_metrics(
    lm: LoadedModel, records: list[CaptionRecord], batch_size: int, report: Progress
) -> dict[str, float]:
    texts = [text for r in records for text in r.captions]
    text_to_image = [i for i, r in enumerate(records) for _ in r.captions]
    if not texts:
        raise InvalidArgument("match evaluation needs records with captions")
    itc, itm = np.zeros((len(records), len(texts))), np.zeros((len(records), len(texts)))
    # Blocks of images x texts: the ITM head runs once per pair, so a block holds batch_size^2 pairs.
    for start in range(0, len(records), batch_size):
        images = [load_image_file(r.image_path) for r in records[start : start + batch_size]]
        for text_start in range(0, len(texts), batch_size):
            block = score_matrix(lm, images, texts[text_start : text_start + batch_size])
            rows = slice(start, start + len(images))
            columns = slice(text_start, text_start + batch_size)
            itc[rows, columns], itm[rows, columns] = block.itc, block.itm
        report(min(start + batch_size, len(records)), len(records))
    recall = retrieval_recall(itc + itm, text_to_image)
    if len(records) < 2:  # no other image to make a non-matching pair with
        return recall
    return recall | {"itm_accuracy": match_accuracy(itm, text_to_image, texts)}
