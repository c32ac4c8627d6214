"""The demo models shipped in blip2/pretrained/ do what their figures say, on held-out shapes and on
shapes a user drew with another tool.

They were trained by `make demo-models` (scripts/train_demo_models.py) through the service's own
jobs; these tests regenerate the `shapes` test split (deterministic, seed 0, never seen in
training) and check the models describe, answer and match it as well as results.json says, then
draw pictures of their own with PIL's ImageDraw (named colours, other sizes, no anti-aliasing, a
JPEG) and ask about those. The bounds are just under what the models do today, so a broken or
missing model fails, and never under what issue 13 asks (VQA, Recall@1 and ITM accuracy 0.95).
"""

import io
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from blip2.caption import caption
from blip2.data.formats import open_dataset
from blip2.data.records import Split
from blip2.data.shapes import PALETTE, PLACES, SHAPE_KINDS, Item, generate_shapes, questions
from blip2.data.shapes import caption as describe
from blip2.evaluation import evaluate
from blip2.images import load_image_file
from blip2.loading import LoadedModel, load_model
from blip2.matching import score_matrix
from blip2.registry import PRETRAINED_DIR
from blip2.vqa import answer

RESULTS = json.loads((PRETRAINED_DIR / "results.json").read_text())
# Held-out test split, results.json: VQA 0.965, Recall@1 0.995 / 0.995, ITM accuracy 0.98, CIDEr 9.8,
# exact captions 0.95 (on the 50 and 200 records checked here: CIDEr 9.8, exact 0.96, VQA 0.985,
# Recall@1 1.0 / 1.0, ITM accuracy 0.99).
MIN_VQA = 0.95  # as issue 13 asks
MIN_RECALL_AT_1 = 0.95  # as issue 13 asks, both ways
MIN_ITM_ACCURACY = 0.95  # as issue 13 asks
MIN_CIDER = 9.5
MIN_EXACT_MATCH = 0.92
# On the pictures drawn here: every caption right, 54 of 58 answers, every caption-picture pair on
# the right side of 0.5. The misses: "is there a blue star?" answered "yes" beside a blue square (twice),
# a lone green triangle and a lone purple square counted as two shapes. (The models published before
# these, trained with 2,400 matcher steps, missed one answer here but 19 of 200 held-out captions.)
MIN_DRAWN_ANSWERS = 0.9
MIN_DRAWN_PAIRS = 0.95  # as issue 13 asks of held-out pairs


@pytest.fixture(scope="module")
def shapes_test(tmp_path_factory: pytest.TempPathFactory) -> object:
    directory = tmp_path_factory.mktemp("shapes") / "shapes"
    generate_shapes(directory)  # the same seed and splits the models were trained with
    return open_dataset(directory)


@pytest.fixture(scope="module")
def captioner(tiny_data_dir: Path) -> LoadedModel:
    return load_model("shapes-blip2", data_dir=tiny_data_dir)


@pytest.fixture(scope="module")
def matcher(tiny_data_dir: Path) -> LoadedModel:
    return load_model("shapes-itm", data_dir=tiny_data_dir)


def test_the_published_figures_are_the_bounds_these_tests_hold_the_models_to() -> None:
    captioner, matcher = (RESULTS["models"][name]["test"] for name in ("shapes-blip2", "shapes-itm"))
    assert captioner["vqa_accuracy"] >= MIN_VQA and captioner["cider"] >= MIN_CIDER
    assert captioner["exact_match"] >= MIN_EXACT_MATCH
    assert min(matcher["i2t_recall@1"], matcher["t2i_recall@1"]) >= MIN_RECALL_AT_1
    assert matcher["itm_accuracy"] >= MIN_ITM_ACCURACY


def test_captions_of_held_out_images_are_sentences_of_the_grammar(captioner: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.captions(Split.TEST)[:50]  # type: ignore[attr-defined]
    scores = evaluate(captioner, records, "caption")
    assert scores["cider"] >= MIN_CIDER and scores["exact_match"] >= MIN_EXACT_MATCH, scores
    said = caption(captioner, [load_image_file(r.image_path) for r in records])
    assert all(_PHRASES.fullmatch(r.captions[0]) for r in said), [r.captions[0] for r in said]


def test_a_detailed_caption_is_the_full_one(captioner: LoadedModel, shapes_test: object) -> None:
    """Its captions already say every shape, colour and place: a "detailed" caption is the same (a prompt
    it was never trained with gave "square at square at the top")."""
    records = shapes_test.captions(Split.TEST)[:8]  # type: ignore[attr-defined]
    images = [load_image_file(r.image_path) for r in records]
    detailed = caption(captioner, images, style="detailed", decoding={"num_beams": 3})
    assert [r.captions for r in detailed] == [r.captions for r in caption(captioner, images, decoding={"num_beams": 3})]
    assert sum(r.captions[0] == record.captions[0] for r, record in zip(detailed, records, strict=True)) >= 7


def test_answers_to_held_out_questions_are_single_words(captioner: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.questions(Split.TEST)[:200]  # type: ignore[attr-defined]
    images = [load_image_file(r.image_path) for r in records]
    answers = answer(captioner, images, [r.question for r in records])
    correct = sum(a.text == r.answers[0] for a, r in zip(answers, records, strict=True))
    assert correct / len(records) >= MIN_VQA
    assert all(a.text in _ANSWER_WORDS for a in answers), [a.text for a in answers if a.text not in _ANSWER_WORDS]


def test_matching_ranks_the_right_caption_first(matcher: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.captions(Split.TEST)[:50]  # type: ignore[attr-defined]
    scores = evaluate(matcher, records, "match")
    assert min(scores["i2t_recall@1"], scores["t2i_recall@1"]) >= MIN_RECALL_AT_1
    assert scores["itm_accuracy"] >= MIN_ITM_ACCURACY


# -- Pictures drawn here, not by the generator ----------------------------------------------------

# (picture side in pixels, the scene), each item (colour, shape, place). PIL's named colours are
# not the generator's palette: "green" is (0, 128, 0), "orange" (255, 165, 0), "purple" (128, 0, 128).
DRAWINGS: list[tuple[int, tuple[Item, ...]]] = [
    (256, (Item("red", "circle", "left"), Item("blue", "square", "top"))),
    (100, (Item("green", "triangle", "center"),)),
    (300, (Item("yellow", "star", "right"), Item("purple", "circle", "bottom"))),
    (160, (Item("orange", "square", "left"), Item("green", "star", "center"))),
    (128, (Item("blue", "triangle", "top"), Item("red", "star", "bottom"))),
    (200, (Item("purple", "square", "right"),)),
    (96, (Item("yellow", "circle", "left"), Item("orange", "triangle", "right"))),
    (240, (Item("blue", "circle", "bottom"), Item("red", "square", "center"))),
]
_ANSWER_WORDS = {*PALETTE, *SHAPE_KINDS, *PLACES, "one", "two", "yes", "no"}
_PHRASE = r"an? (?:{}) (?:{}) (?:on|at|in) the (?:{})".format(
    *("|".join(words) for words in (PALETTE, SHAPE_KINDS, PLACES))
)
_PHRASES = re.compile(f"{_PHRASE}(?: and {_PHRASE})?")
_PLACES = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8), "center": (0.5, 0.5)}


def _drawing(side: int, scene: tuple[Item, ...], jpeg: bool) -> Image.Image:
    image = Image.new("RGB", (side, side), "white")
    canvas = ImageDraw.Draw(image)
    for item in scene:
        x, y = (f * side for f in _PLACES[item.position])
        r = 0.12 * side
        if item.shape == "circle":
            canvas.ellipse((x - r, y - r, x + r, y + r), fill=item.colour)
        elif item.shape == "square":
            canvas.rectangle((x - 0.8 * r, y - 0.8 * r, x + 0.8 * r, y + 0.8 * r), fill=item.colour)
        elif item.shape == "triangle":
            canvas.polygon([(x, y - r), (x + 0.87 * r, y + r / 2), (x - 0.87 * r, y + r / 2)], fill=item.colour)
        else:
            canvas.polygon(_star(x, y, r), fill=item.colour)
    if not jpeg:
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return Image.open(buffer).convert("RGB")


def _star(x: float, y: float, r: float) -> list[tuple[float, float]]:
    """Five points up, the inner corners at 40% of the radius (the generator's are at 45%)."""
    radii = [r if k % 2 == 0 else 0.4 * r for k in range(10)]
    angles = [math.pi * (k / 5 - 0.5) for k in range(10)]
    return [(x + d * math.cos(a), y + d * math.sin(a)) for d, a in zip(radii, angles, strict=True)]


@pytest.fixture(scope="module")
def drawings() -> list[tuple[Image.Image, tuple[Item, ...]]]:
    return [(_drawing(side, scene, jpeg=n % 2 == 1), scene) for n, (side, scene) in enumerate(DRAWINGS)]


def test_answers_about_pictures_drawn_elsewhere(
    captioner: LoadedModel, drawings: list[tuple[Image.Image, tuple[Item, ...]]]
) -> None:
    asked = [(image, q, a) for image, scene in drawings for q, a in questions(scene, random.Random(len(scene)))]
    answers = answer(captioner, [image for image, _, _ in asked], [q for _, q, _ in asked])
    right = sum(got.text == a for (_, _, a), got in zip(asked, answers, strict=True))
    assert right / len(asked) >= MIN_DRAWN_ANSWERS


def test_captions_of_pictures_drawn_elsewhere(
    captioner: LoadedModel, drawings: list[tuple[Image.Image, tuple[Item, ...]]]
) -> None:
    said = caption(captioner, [image for image, _ in drawings])
    assert [r.captions[0] for r in said] == [describe(scene) for _, scene in drawings]


def test_matching_pictures_drawn_elsewhere(
    matcher: LoadedModel, drawings: list[tuple[Image.Image, tuple[Item, ...]]]
) -> None:
    """Each picture ranks its own caption first, and the match probability is over one half for its own
    caption and under for every other one, but for at most one pair in twenty."""
    scores = score_matrix(matcher, [image for image, _ in drawings], [describe(scene) for _, scene in drawings])
    pairs = [(p > 0.5) == (i == j) for i, row in enumerate(scores.itm) for j, p in enumerate(row)]
    assert sum(pairs) / len(pairs) >= MIN_DRAWN_PAIRS, scores.itm
    assert [max(range(len(row)), key=row.__getitem__) for row in scores.itm] == list(range(len(drawings)))


def test_the_probe_script_measures_what_the_evaluation_does() -> None:
    """scripts/probe_demo_models.py (the README's weak spots) reads the same held-out VQA accuracy as
    the evaluate job that published results.json, and counts every lone shape once."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "probe_demo_models.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=True)
    lone = re.search(r"^lone shapes: (\d+) of (\d+) counted as one, (\d+) captioned exactly$", done.stdout, re.M)
    assert lone is not None and lone[2] == "120", done.stdout
    vqa = re.search(r"^held-out VQA (\d\.\d+)$", done.stdout, re.M)
    assert vqa is not None and float(vqa[1]) == round(RESULTS["models"]["shapes-blip2"]["test"]["vqa_accuracy"], 4)
    kinds = dict(re.findall(r"^  (.+?) +\d+ of (\d+)$", done.stdout, re.M))
    assert sum(map(int, kinds.values())) == 1588 and int(kinds["is there: there"]) == 100, done.stdout
