"""What the demo captioner gets right, by kind of question, where the held-out figures say too little.

    .venv/bin/python scripts/probe_demo_models.py [MODEL]      # default: shapes-blip2

Prints, for `MODEL` (a registry name or a checkpoint directory):

- lone shapes: every scene of one shape (120; about 4 of the 200 held-out images are one), drawn
  plainly at 128 px: how many are counted as one shape, and captioned exactly;
- held-out questions (the `shapes` test split, seed 0, regenerated): accuracy by kind of question,
  with "is there ...?" split into a shape that is there, a near miss (a shape not there that shares
  a colour or a kind with one that is) and a far miss.

A quality probe for whoever retrains the demo models (`make demo-models`); the tests hold the
published figures (tests/blip2/test_pretrained.py).
"""

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from blip2.caption import caption
from blip2.data.formats import open_dataset
from blip2.data.records import Split
from blip2.data.shapes import all_scenes, draw, generate_shapes
from blip2.data.shapes import caption as describe
from blip2.images import load_image_file
from blip2.loading import load_model
from blip2.vqa import answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="shapes-blip2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blip2-probe-") as scratch:
        model = load_model(args.model, data_dir=Path(scratch) / "data")
        lone = [scene for scene in all_scenes() if len(scene) == 1]
        images = [draw(scene, 128) for scene in lone]
        counted = answer(model, images, ["how many shapes are there?"] * len(lone))
        said = caption(model, images)
        exact = sum(r.captions[0] == describe(scene) for r, scene in zip(said, lone, strict=True))
        ones = sum(a.text == "one" for a in counted)
        print(f"lone shapes: {ones} of {len(lone)} counted as one, {exact} captioned exactly")

        generate_shapes(Path(scratch) / "shapes")
        dataset = open_dataset(Path(scratch) / "shapes")
        shown = {r.image_id: r.captions[0].split() for r in dataset.captions(Split.TEST)}
        records = dataset.questions(Split.TEST)
        answers = answer(model, [load_image_file(r.image_path) for r in records], [r.question for r in records])
        right, asked = Counter[str](), Counter[str]()
        for got, record in zip(answers, records, strict=True):
            kind = _kind(record.question, record.answers[0], shown[record.image_id])
            asked[kind] += 1
            right[kind] += got.text == record.answers[0]
        print(f"held-out VQA {sum(right.values()) / sum(asked.values()):.4f}")
        for kind in asked:
            print(f"  {kind:22s} {right[kind]:4d} of {asked[kind]}")


def _kind(question: str, truth: str, caption_words: list[str]) -> str:
    if not question.startswith("is there"):
        return " ".join(question.split()[:2])
    if truth == "yes":
        return "is there: there"
    colour, shape = question.rstrip("?").split()[-2:]
    return "is there: near miss" if colour in caption_words or shape in caption_words else "is there: far miss"


if __name__ == "__main__":
    main()
