"""BLEU-4 and CIDEr-D against pycocoevalcap on the same tokens; VQA accuracy; retrieval recall."""

import random
import shutil

import pytest

from blip2.errors import InvalidArgument
from blip2.metrics import (
    bleu_4,
    caption_scores,
    cider,
    exact_match,
    match_accuracy,
    normalize_answer,
    question_accuracy,
    retrieval_recall,
    tokenize,
    vqa_accuracy,
)

pycocoevalcap = pytest.importorskip("pycocoevalcap")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402

WORDS = [
    "a", "an", "the", "red", "blue", "green", "small", "big", "circle",
    "square", "triangle", "on", "left", "right", "of", "top", "bottom", "two",
]  # fmt: skip


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def _random_corpus(seed: int, images: int, max_refs: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    refs = [[_sentence(rng) for _ in range(rng.randint(1, max_refs))] for _ in range(images)]
    # Some hypotheses copy a reference, so that high-order n-grams match too.
    hyps = [rng.choice(r) if rng.random() < 0.3 else _sentence(rng) for r in refs]
    return hyps, refs


HAND_MADE = [
    (["a red circle"], [["a red circle"]]),
    (
        ["a man riding a horse on the beach", "two dogs play", "a plate of food"],
        [
            ["a man rides a horse along the beach", "a person on a horse by the sea", "man riding horse"],
            ["two dogs playing in the grass", "dogs play together"],
            ["a plate with food on it", "a meal on a white plate", "food", "a plate of pasta"],
        ],
    ),
    (["short", "a much longer hypothesis than any of the references"], [["a short one"], ["longer", "a b"]]),
]
CORPORA = HAND_MADE + [_random_corpus(seed, images, refs) for seed, images, refs in [(0, 5, 1), (1, 20, 5), (2, 40, 3)]]


def _coco_format(hyps: list[str], refs: list[list[str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    return {i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


@pytest.mark.parametrize(("hyps", "refs"), CORPORA)
def test_bleu_4_matches_pycocoevalcap(hyps: list[str], refs: list[list[str]]) -> None:
    gts, res = _coco_format(hyps, refs)
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu_4(hyps, refs) == pytest.approx(expected[3], abs=1e-9)


@pytest.mark.parametrize(("hyps", "refs"), CORPORA)
def test_cider_matches_pycocoevalcap(hyps: list[str], refs: list[list[str]]) -> None:
    gts, res = _coco_format(hyps, refs)
    expected, _ = Cider().compute_score(gts, res)
    assert cider(hyps, refs) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java")
def test_tokenize_agrees_with_ptb_on_plain_captions() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = ["A Man riding a horse, on the beach.", "Two dogs; playing!", "A plate of food?"]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert [tokenize(c) for c in captions] == [ptb[i][0] for i in range(len(captions))]


def test_caption_scores_tokenize_first() -> None:
    scores = caption_scores(["A big red circle!"], [["a big, red circle"]])
    assert scores["bleu_4"] == pytest.approx(1.0)
    assert scores["cider"] == pytest.approx(0.0)  # one image: every n-gram is in every document, idf 0


def test_exact_match_counts_captions_equal_to_a_reference_after_tokenizing() -> None:
    refs = [["a red circle on the left"], ["a blue star at the top", "a blue star"]]
    assert exact_match(["a red circle on the left", "a blue star"], refs) == 1.0
    assert exact_match(["a red circle on the right", "a blue star"], refs) == 0.5
    assert caption_scores(["A red circle, on the left!"], [refs[0]])["exact_match"] == 1.0


def test_scorers_refuse_mismatched_inputs() -> None:
    with pytest.raises(InvalidArgument):
        bleu_4(["a"], [])
    with pytest.raises(InvalidArgument):
        cider(["a"], [[]])


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("the dog", "dog"),
        ("An apple", "apple"),
        ("dont", "don't"),
        ("yes.", "yes"),
        ("2.5", "2.5"),
        ("black-and-white", "black and white"),
        ("hello, world", "hello world"),
        ("1,000", "1000"),
        ("a cat!", "cat"),
        ("  red\tand\nblue ", "red and blue"),
        ("(left)", "left"),
    ],
)
def test_vqa_answer_normalisation(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    ("prediction", "humans", "accuracy"),
    [
        ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),  # 3 agree: left-out subsets give 2/3 three times, 1 seven times
        ("no", ["yes"] * 3 + ["no"] * 7, 1.0),
        ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6),
        ("cat", ["cat"] + ["dog"] * 9, 0.3),
        ("maybe", ["yes"] * 10, 0.0),
        ("Two", ["2"] * 10, 1.0),
        ("Yes", ["yes"] * 10, 1.0),  # always normalised (the official code would say 0 here)
        ("red", ["red"], 1.0),  # a single reference answer: exact match
        ("blue", ["red"], 0.0),
    ],
)
def test_question_accuracy_rule(prediction: str, humans: list[str], accuracy: float) -> None:
    assert question_accuracy(prediction, humans) == pytest.approx(accuracy)


def test_vqa_accuracy_is_the_mean_over_questions() -> None:
    assert vqa_accuracy(["yes", "cat"], [["yes"] * 10, ["cat"] + ["dog"] * 9]) == pytest.approx((1.0 + 0.3) / 2)
    with pytest.raises(InvalidArgument):
        vqa_accuracy(["yes"], [])


def test_retrieval_recall_on_a_hand_made_matrix() -> None:
    # 3 images, 5 texts: texts 0 and 1 describe image 0, text 2 image 1, texts 3 and 4 image 2.
    scores = [
        [0.9, 0.1, 0.2, 0.3, 0.0],  # image 0: its text 0 ranks first
        [0.8, 0.1, 0.3, 0.2, 0.0],  # image 1: its text 2 ranks second
        [0.1, 0.9, 0.8, 0.25, 0.3],  # image 2: its best text (4) ranks third
    ]
    recall = retrieval_recall(scores, [0, 0, 1, 2, 2], ks=(1, 2, 3))
    assert recall["i2t_recall@1"] == pytest.approx(1 / 3)
    assert recall["i2t_recall@2"] == pytest.approx(2 / 3)
    assert recall["i2t_recall@3"] == pytest.approx(1.0)
    # Columns: text 0 -> image 0 first; text 1 -> image 2 beats image 0; text 2 -> image 2 beats image 1;
    # text 3 -> image 0 beats image 2; text 4 -> image 2 first.
    assert recall["t2i_recall@1"] == pytest.approx(2 / 5)
    assert recall["t2i_recall@2"] == pytest.approx(5 / 5)
    assert recall["recall@1"] == pytest.approx((1 / 3 + 2 / 5) / 2)


def test_match_accuracy_counts_each_pair_on_the_right_side_of_one_half() -> None:
    # 3 images, 4 texts (texts 0 and 1 describe image 0). Non-matching pairs: each text against the
    # image after its own: texts 0, 1 -> image 1, text 2 -> image 2, text 3 -> image 0.
    probabilities = [
        [0.9, 0.4, 0.1, 0.7],  # text 1 misses its own image; text 3 is taken for image 0's
        [0.2, 0.3, 0.8, 0.1],
        [0.1, 0.1, 0.2, 0.6],
    ]
    assert match_accuracy(probabilities, [0, 0, 1, 2], ["a", "b", "c", "d"]) == pytest.approx(6 / 8)
    # A text that also describes the next image makes no non-matching pair with it.
    assert match_accuracy(probabilities, [0, 0, 1, 2], ["a", "b", "c", "a"]) == pytest.approx(6 / 7)


def test_retrieval_recall_refuses_bad_shapes() -> None:
    with pytest.raises(InvalidArgument):
        retrieval_recall([[0.1, 0.2]], [0])
    with pytest.raises(InvalidArgument):
        retrieval_recall([[0.1, 0.2]], [0, 1])
