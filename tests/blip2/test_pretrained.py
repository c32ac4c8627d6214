"""The demo models shipped in blip2/pretrained/ do what their figures say, on held-out shapes.

They were trained by `make demo-models` (scripts/train_demo_models.py) through the service's own
jobs; these tests regenerate the `shapes` test split (deterministic, seed 0, never seen in
training) and check the models describe, answer and match it well.
"""

import json
from pathlib import Path

import pytest

from blip2.caption import caption
from blip2.data.formats import open_dataset
from blip2.data.records import Split
from blip2.data.shapes import generate_shapes
from blip2.evaluation import evaluate
from blip2.images import load_image_file
from blip2.loading import LoadedModel, load_model
from blip2.registry import PRETRAINED_DIR
from blip2.vqa import answer

RESULTS = json.loads((PRETRAINED_DIR / "results.json").read_text())
# Below the published test figures (CIDEr 5.5, VQA 0.56, Recall@1 0.70 on all 200 test images),
# far above what the untrained tiny bases score (about 0): a broken or missing model fails.
MIN_CIDER, MIN_VQA_EXACT, MIN_RECALL_AT_1 = 4.0, 0.5, 0.8


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


def test_the_published_figures_are_the_test_split_s(shapes_test: object) -> None:
    models = RESULTS["models"]
    assert models["shapes-blip2"]["test"]["cider"] > MIN_CIDER
    assert models["shapes-itm"]["test"]["recall@5"] == 1.0


def test_captions_of_held_out_images(captioner: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.captions(Split.TEST)[:50]  # type: ignore[attr-defined]
    results = caption(captioner, [load_image_file(r.image_path) for r in records])
    words = {w for r in results for w in r.captions[0].split()}
    assert {"red", "circle", "left"} & words  # real words of the domain, not noise
    assert evaluate(captioner, records, "caption")["cider"] >= MIN_CIDER


def test_answers_to_held_out_questions(captioner: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.questions(Split.TEST)[:200]  # type: ignore[attr-defined]
    images = [load_image_file(r.image_path) for r in records]
    answers = answer(captioner, images, [r.question for r in records])
    correct = sum(a.text == r.answers[0] for a, r in zip(answers, records, strict=True))
    assert correct / len(records) >= MIN_VQA_EXACT


def test_matching_ranks_the_right_caption_first(matcher: LoadedModel, shapes_test: object) -> None:
    records = shapes_test.captions(Split.TEST)[:50]  # type: ignore[attr-defined]
    assert evaluate(matcher, records, "match")["recall@1"] >= MIN_RECALL_AT_1
