"""Evaluation: known answers give known scores, and every task returns all its metrics in range."""

import pytest
from PIL import Image, ImageDraw

from blip2.caption import caption
from blip2.data.records import CaptionRecord, VqaRecord
from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument
from blip2.evaluation import evaluate
from blip2.loading import LoadedModel
from blip2.metrics import caption_scores, retrieval_recall, vqa_accuracy
from blip2.vqa import answer

GREEDY = DecodingOptions(num_beams=1, max_new_tokens=8)
COLOURS = ["red", "blue", "green", "yellow", "purple"]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[CaptionRecord]:
    """Five drawn images; the second has two captions."""
    root = tmp_path_factory.mktemp("eval")
    out = []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((4 + 6 * i, 8, 40 + 4 * i, 60), fill=colour)
        path = root / f"{i}.png"
        image.save(path)
        captions = [f"a {colour} ellipse"] + (["an oval shape"] if i == 1 else [])
        out.append(CaptionRecord(image_id=str(i), image_path=path, captions=captions))
    return out


def _images(records: list[CaptionRecord]) -> list[Image.Image]:
    return [Image.open(r.image_path).convert("RGB") for r in records]


def test_references_scored_against_themselves_are_perfect() -> None:
    refs = [["a red ball on the grass"], ["two blue cars parked near a wall"], ["a dog sleeping on a sofa"]]
    scores = caption_scores([r[0] for r in refs], refs)
    assert scores["bleu_4"] == pytest.approx(1.0)
    assert scores["cider"] == pytest.approx(10.0)  # distinct captions: CIDEr-D's maximum
    assert vqa_accuracy(["yes", "2"], [["yes"] * 10, ["two"] * 10]) == 1.0
    assert set(retrieval_recall([[1.0, 0.0], [0.0, 1.0]], [0, 1]).values()) == {1.0}


def test_caption_metrics_of_the_models_own_captions_are_perfect(opt: LoadedModel, records: list[CaptionRecord]) -> None:
    # The model's own (greedy) captions as the references: evaluate must pair every output with its record.
    own = [r.captions[0] for r in caption(opt, _images(records), decoding=GREEDY)]
    assert len(set(own)) > 1  # the random tiny model still says different things about different images
    known = [CaptionRecord(r.image_id, r.image_path, [c]) for r, c in zip(records, own, strict=True)]
    progress: list[tuple[int, int]] = []
    scores = evaluate(opt, known, "caption", batch_size=2, decoding=GREEDY, on_progress=lambda *p: progress.append(p))
    assert scores["bleu_4"] == pytest.approx(1.0)
    assert 0.0 <= scores["cider"] <= 10.0
    assert progress == [(2, 5), (4, 5), (5, 5)]


def test_vqa_accuracy_of_the_models_own_answers_is_perfect(t5: LoadedModel, records: list[CaptionRecord]) -> None:
    questions = [f"what colour is shape {i}?" for i in range(len(records))]
    own = [a.text for a in answer(t5, _images(records), questions, decoding=GREEDY)]
    known = [
        VqaRecord(f"q{i}", r.image_id, r.image_path, q, [a] * 10)
        for i, (r, q, a) in enumerate(zip(records, questions, own, strict=True))
    ]
    assert evaluate(t5, known, "vqa", batch_size=2, decoding=GREEDY) == {"vqa_accuracy": pytest.approx(1.0)}
    wrong = [VqaRecord(r.question_id, r.image_id, r.image_path, r.question, ["zzz"] * 10) for r in known]
    assert evaluate(t5, wrong, "vqa", batch_size=2, decoding=GREEDY) == {"vqa_accuracy": 0.0}


def test_match_metrics_cover_both_directions(itm: LoadedModel, records: list[CaptionRecord]) -> None:
    scores = evaluate(itm, records, "match", batch_size=2)  # 5 images x 6 texts in 2 x 2 blocks
    assert set(scores) == {f"{d}recall@{k}" for d in ("", "i2t_", "t2i_") for k in (1, 5, 10)} | {"itm_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["t2i_recall@5"] == scores["i2t_recall@10"] == 1.0  # only 5 images: every one is in a top 5


def test_evaluate_refuses_the_wrong_records(opt: LoadedModel, records: list[CaptionRecord]) -> None:
    with pytest.raises(InvalidArgument):
        evaluate(opt, records, "vqa")
    with pytest.raises(InvalidArgument):
        evaluate(opt, [], "caption")
    with pytest.raises(InvalidArgument):
        evaluate(opt, records, "translate")


def test_batching_does_not_change_the_scores(itm: LoadedModel, records: list[CaptionRecord]) -> None:
    assert evaluate(itm, records, "match", batch_size=2) == pytest.approx(
        evaluate(itm, records, "match", batch_size=16)
    )
