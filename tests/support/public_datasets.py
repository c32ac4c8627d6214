"""Small zip archives laid out as the public datasets are, with the files' real names and JSON shapes.

Each holds real JPEGs (PIL) and the annotation JSON of its format: COCO captions
(`annotations/captions_<split><year>.json` + `<split><year>/`), VQAv2 (questions + annotations +
`val2014/COCO_val2014_<id>.jpg`), Karpathy's `dataset_coco.json`, and a COCO-format archive whose
files have names of their own (`annotations/captions.json` + `images/`), which needs options.
"""

import io
import json

from PIL import Image

from tests.support.archives import zip_of

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def coco_captions(ids: list[int]) -> bytes:
    """COCO caption annotations: two captions for each image id."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 16, "height": 16} for i in ids]
    annotations = [
        {"id": 10 * i + k, "image_id": i, "caption": f"a {COLOURS[i % len(COLOURS)]} square, take {k}"}
        for i in ids
        for k in (1, 2)
    ]
    return json.dumps({"info": {}, "images": images, "annotations": annotations}).encode()


def coco_archive(splits: dict[str, list[int]], year: int = 2017, top: str = "") -> bytes:
    """COCO as its own zips unpack: `annotations/captions_<split><year>.json` and `<split><year>/*.jpg`."""
    members: dict[str, bytes] = {}
    for split, ids in splits.items():
        members[f"{top}annotations/captions_{split}{year}.json"] = coco_captions(ids)
        members |= {f"{top}{split}{year}/{i:012d}.jpg": jpeg(COLOURS[i % len(COLOURS)]) for i in ids}
    return zip_of(members)


def coco_with_names_of_its_own() -> bytes:
    """COCO-format captions under names COCO never used: only options can say which split they are."""
    ids = [1, 2, 3]
    members = {f"images/{i:012d}.jpg": jpeg(COLOURS[i]) for i in ids}
    return zip_of(members | {"annotations/captions.json": coco_captions(ids)})


def vqav2_archive(ids: list[int]) -> bytes:
    """VQAv2 val: the questions and annotations files as published, images in `val2014/`."""
    questions = [{"question_id": 100 * i, "image_id": i, "question": "what colour is it?"} for i in ids]
    answers = [
        {
            "question_id": 100 * i,
            "image_id": i,
            "multiple_choice_answer": COLOURS[i],
            "answers": [{"answer": COLOURS[i], "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)],
        }
        for i in ids
    ]
    members = {
        "v2_OpenEnded_mscoco_val2014_questions.json": json.dumps({"questions": questions}).encode(),
        "v2_mscoco_val2014_annotations.json": json.dumps({"annotations": answers}).encode(),
    }
    return zip_of(members | {f"images/val2014/COCO_val2014_{i:012d}.jpg": jpeg(COLOURS[i]) for i in ids})


def karpathy_archive(splits: dict[int, str]) -> bytes:
    """Karpathy's `dataset_coco.json` (in a folder, as in caption_datasets.zip) beside COCO's `val2014/`."""
    entries = [
        {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{i:012d}.jpg",
            "cocoid": i,
            "split": split,
            "sentences": [{"raw": f"a {COLOURS[i]} square", "tokens": ["a", COLOURS[i], "square"]}],
        }
        for i, split in splits.items()
    ]
    members = {"caption_datasets/dataset_coco.json": json.dumps({"images": entries, "dataset": "coco"}).encode()}
    return zip_of(members | {f"val2014/COCO_val2014_{i:012d}.jpg": jpeg(COLOURS[i]) for i in splits})
