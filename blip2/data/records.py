"""The records every dataset format is read into, and the on-disk description of a dataset.

A registered dataset is a directory `DATA_DIR/datasets/NAME/` holding its files and a
`dataset.json` (`DatasetInfo`) that says which format to read them with. Training and
evaluation see only these records, whatever the format was.
"""

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Task(StrEnum):
    """What a dataset is used for, and what a training or evaluation job does with it."""

    CAPTION = "caption"
    VQA = "vqa"
    CAPTION_VQA = "caption_vqa"  # one model that captions and answers, trained on both kinds of record
    MATCH = "match"  # image-text retrieval (ITC/ITM)


@dataclass(frozen=True)
class CaptionRecord:
    """One image and its reference captions (also the unit of retrieval data)."""

    image_id: str
    image_path: Path
    captions: list[str]


@dataclass(frozen=True)
class VqaRecord:
    """One question about one image, with the human answers (VQAv2 has ten per question)."""

    question_id: str
    image_id: str
    image_path: Path
    question: str
    answers: list[str]


@dataclass(frozen=True)
class DatasetInfo:
    """`dataset.json`: how to read a registered dataset's directory."""

    name: str
    format: str  # coco_captions | coco_karpathy | vqav2 | flickr30k | jsonl | shapes
    tasks: list[str]  # the Task values it supports
    splits: dict[str, int] = field(default_factory=dict)  # split -> number of records
    options: dict[str, str] = field(default_factory=dict)  # format-specific (file names, image folder)

    def save(self, directory: Path) -> None:
        (directory / "dataset.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> "DatasetInfo":
        return cls(**json.loads((directory / "dataset.json").read_text()))
