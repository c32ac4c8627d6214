"""Every dataset format read from small real fixtures: images written with PIL, JSON in the real shapes."""

import json
from pathlib import Path

import pytest
from PIL import Image

from blip2.data.formats import (
    FORMATS,
    dataset_path,
    list_datasets,
    load_dataset,
    open_dataset,
    register_dataset,
)
from blip2.data.records import DatasetInfo, Split
from blip2.errors import DatasetNotFound, InvalidArgument, InvalidDataset


def image(path: Path, colour: str = "red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def register(directory: Path, format: str, **options: str) -> DatasetInfo:
    return register_dataset(directory, DatasetInfo(directory.name, format, [], {}, options))


# --- COCO captions ---


def coco_captions(directory: Path) -> Path:
    for image_id in (1, 2):
        image(directory / f"val2017/{image_id:012d}.jpg")
    write_json(
        directory / "annotations/captions_val2017.json",
        {
            "info": {},
            "images": [
                {"id": 1, "file_name": "000000000001.jpg", "width": 8, "height": 8},
                {"id": 2, "file_name": "000000000002.jpg", "width": 8, "height": 8},
                {"id": 3, "file_name": "000000000003.jpg", "width": 8, "height": 8},  # no captions
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "caption": "A red square. "},
                {"id": 11, "image_id": 2, "caption": "Another red square."},
                {"id": 12, "image_id": 1, "caption": "A small red image."},
            ],
        },
    )
    return directory


def test_coco_captions_group_by_image(tmp_path: Path) -> None:
    directory = coco_captions(tmp_path / "coco")
    info = register(directory, "coco_captions", val_annotations="annotations/captions_val2017.json")
    assert info.splits == {"val": 2}
    assert info.tasks == ["caption", "match"]
    dataset = open_dataset(directory)
    assert dataset.info == info
    assert dataset.splits() == [Split.VAL]
    first, second = dataset.captions(Split.VAL)
    assert first.image_id == "1"
    assert first.captions == ["A red square.", "A small red image."]
    # The image folder follows from the annotation file's name: captions_val2017 -> val2017.
    assert first.image_path == directory / "val2017/000000000001.jpg"
    assert Image.open(second.image_path).size == (8, 8)


def test_coco_captions_image_folder_option(tmp_path: Path) -> None:
    directory = coco_captions(tmp_path / "coco")
    (directory / "val2017").rename(directory / "pictures")
    register(directory, "coco_captions", val_annotations="annotations/captions_val2017.json", val_images="pictures")
    assert all(r.image_path.is_file() for r in open_dataset(directory).captions(Split.VAL))


def test_coco_annotation_for_unknown_image(tmp_path: Path) -> None:
    directory = tmp_path / "coco"
    write_json(directory / "ann.json", {"images": [], "annotations": [{"image_id": 7, "caption": "x"}]})
    with pytest.raises(InvalidDataset, match=r"ann.json: annotations\[0\]: image_id 7 is not in 'images'"):
        register(directory, "coco_captions", val_annotations="ann.json", val_images=".")


# --- Karpathy splits (COCO and Flickr30k) ---


def karpathy_entry(split: str, cocoid: int, *, filepath: str | None = "val2014") -> dict[str, object]:
    entry: dict[str, object] = {
        "filename": f"COCO_val2014_{cocoid:012d}.jpg",
        "imgid": cocoid,
        "split": split,
        "sentences": [{"raw": f"caption {cocoid} a", "tokens": []}, {"raw": f"caption {cocoid} b ", "tokens": []}],
        "cocoid": cocoid,
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def test_coco_karpathy_counts_restval_as_train(tmp_path: Path) -> None:
    directory = tmp_path / "karpathy"
    entries = [karpathy_entry(s, i) for i, s in enumerate(["train", "restval", "val", "test", "test"], start=1)]
    for entry in entries:
        image(directory / "val2014" / str(entry["filename"]))
    write_json(directory / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    info = register(directory, "coco_karpathy")
    assert info.splits == {"train": 2, "val": 1, "test": 2}
    dataset = open_dataset(directory)
    assert [r.image_id for r in dataset.captions(Split.TRAIN)] == ["1", "2"]
    record = dataset.captions(Split.TEST)[0]
    assert record.captions == ["caption 4 a", "caption 4 b"]
    assert record.image_path == directory / "val2014/COCO_val2014_000000000004.jpg"
    assert record.image_path.is_file()


def test_splits_option_narrows(tmp_path: Path) -> None:
    directory = tmp_path / "karpathy"
    write_json(directory / "dataset_coco.json", {"images": [karpathy_entry(s, 1) for s in ("train", "val", "test")]})
    info = register(directory, "coco_karpathy", splits="val,test")
    assert info.splits == {"val": 1, "test": 1}
    with pytest.raises(InvalidArgument, match="no 'train' split"):
        open_dataset(directory).captions(Split.TRAIN)


def test_flickr30k(tmp_path: Path) -> None:
    directory = tmp_path / "flickr"
    entries = [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "test", "sentences": [{"raw": "Two young guys."}]},
        {"filename": "10002456.jpg", "imgid": 1, "split": "train", "sentences": [{"raw": "Several men."}]},
    ]
    for entry in entries:
        image(directory / "flickr30k-images" / str(entry["filename"]))
    write_json(directory / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    info = register(directory, "flickr30k")
    assert info.splits == {"train": 1, "test": 1}
    (record,) = open_dataset(directory).captions(Split.TEST)
    assert record.image_id == "1000092795"
    assert record.captions == ["Two young guys."]
    assert record.image_path.is_file()


def test_karpathy_unknown_split(tmp_path: Path) -> None:
    directory = tmp_path / "karpathy"
    write_json(directory / "dataset_coco.json", {"images": [karpathy_entry("holdout", 1)]})
    with pytest.raises(InvalidDataset, match=r"dataset_coco.json: images\[0\]: unknown split 'holdout'"):
        register(directory, "coco_karpathy")


# --- VQAv2 ---


def vqav2(directory: Path) -> Path:
    for image_id in (42, 73):
        image(directory / f"val2014/COCO_val2014_{image_id:012d}.jpg")
    questions = [
        {"image_id": 42, "question": "What colour is it?", "question_id": 420},
        {"image_id": 73, "question": "Is it red?", "question_id": 730},
    ]
    write_json(directory / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    annotations = [
        {
            "question_id": 420,
            "image_id": 42,
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
        },
        {"question_id": 730, "image_id": 73, "multiple_choice_answer": "yes", "answers": []},
    ]
    write_json(directory / "v2_mscoco_val2014_annotations.json", {"annotations": annotations})
    write_json(directory / "test_questions.json", {"questions": questions[:1]})
    return directory


def test_vqav2_questions_with_answers(tmp_path: Path) -> None:
    directory = vqav2(tmp_path / "vqa")
    info = register(
        directory,
        "vqav2",
        val_questions="v2_OpenEnded_mscoco_val2014_questions.json",
        val_annotations="v2_mscoco_val2014_annotations.json",
        val_images="val2014",
        test_questions="test_questions.json",
        test_images="val2014",
    )
    assert info.tasks == ["vqa"]
    assert info.splits == {"val": 2, "test": 1}
    dataset = open_dataset(directory)
    first, second = dataset.questions(Split.VAL)
    assert (first.question_id, first.image_id, first.question) == ("420", "42", "What colour is it?")
    assert first.answers == ["red"] * 10
    assert first.image_path == directory / "val2014/COCO_val2014_000000000042.jpg"
    assert first.image_path.is_file()
    assert second.answers == ["yes"]  # only the consensus answer is given
    assert dataset.questions(Split.TEST)[0].answers == []  # test questions have no annotations
    with pytest.raises(InvalidArgument, match="no caption data"):
        dataset.captions(Split.VAL)


def test_vqav2_question_without_annotation(tmp_path: Path) -> None:
    directory = vqav2(tmp_path / "vqa")
    write_json(directory / "ann.json", {"annotations": []})
    with pytest.raises(InvalidDataset, match=r"questions\[0\]: question 420 has no annotation"):
        register(
            directory,
            "vqav2",
            val_questions="v2_OpenEnded_mscoco_val2014_questions.json",
            val_annotations="ann.json",
            val_images="val2014",
        )


# --- JSON lines ---


def jsonl_lines(path: Path, lines: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")


def test_jsonl_captions_and_questions(tmp_path: Path) -> None:
    directory = tmp_path / "custom"
    image(directory / "pics/a.png")
    image(directory / "pics/b.png", "blue")
    jsonl_lines(
        directory / "train.jsonl",
        [
            {"image": "pics/a.png", "caption": "a red thing"},
            {"image": "pics/b.png", "captions": ["a blue thing", "blue"], "id": "b"},
            {"image": "pics/a.png", "caption": "red"},  # merged with the first line
            {"image": "pics/a.png", "question": "what colour?", "answer": "red"},
            {"image": "pics/b.png", "question": "what colour?", "answers": ["blue", "navy"], "question_id": 7},
        ],
    )
    jsonl_lines(directory / "test.jsonl", [{"image": "pics/b.png", "caption": "blue"}])
    info = register(directory, "jsonl")
    assert info.tasks == ["caption", "vqa", "match"]
    assert info.splits == {"train": 2, "test": 1}
    dataset = open_dataset(directory)
    a, b = dataset.captions(Split.TRAIN)
    assert (a.image_id, a.captions) == ("pics/a.png", ["a red thing", "red"])
    assert (b.image_id, b.captions) == ("b", ["a blue thing", "blue"])
    assert Image.open(b.image_path).getpixel((0, 0)) == (0, 0, 255)
    q1, q2 = dataset.questions(Split.TRAIN)
    assert (q1.question_id, q1.answers) == ("train-0", ["red"])
    assert (q2.question_id, q2.image_id, q2.answers) == ("7", "pics/b.png", ["blue", "navy"])
    with pytest.raises(InvalidArgument, match="no 'val' split"):
        dataset.captions(Split.VAL)


def test_jsonl_questions_in_their_own_file_and_root(tmp_path: Path) -> None:
    directory = tmp_path / "custom"
    image(directory / "data/img/a.png")
    jsonl_lines(directory / "data/val_qa.jsonl", [{"image": "img/a.png", "question": "q?", "answer": "a"}])
    info = register(directory, "jsonl", root="data", val_questions="val_qa.jsonl")
    assert (info.tasks, info.splits) == (["vqa"], {"val": 1})
    assert open_dataset(directory).questions(Split.VAL)[0].image_path == directory / "data/img/a.png"


@pytest.mark.parametrize(
    "line,message",
    [
        ("not json", r"train.jsonl: line 1: not valid JSON"),
        ("[1, 2]", r"train.jsonl: line 1: expected a JSON object"),
        ('{"caption": "x"}', r"train.jsonl: line 1: missing 'image'"),
        ('{"image": "a.png"}', r"train.jsonl: line 1: missing 'captions'"),
        ('{"image": "a.png", "captions": []}', r"'captions' should be a non-empty list"),
        ('{"image": 5, "caption": "x"}', r"'image' should be a string, got int"),
        ('{"image": "a.png", "caption": "x", "id": true}', r"'id' should be a number or a string"),
        ('{"image": "../../etc/passwd", "caption": "x"}', r"line 1: path '../../etc/passwd' is outside"),
        ('{"image": "/etc/passwd", "caption": "x"}', r"path '/etc/passwd' is outside"),
        ('{"image": "a/../../x.png", "caption": "x"}', r"is outside the dataset directory"),
    ],
)
def test_jsonl_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    directory = tmp_path / "custom"
    directory.mkdir()
    (directory / "train.jsonl").write_text(line + "\n")
    with pytest.raises(InvalidDataset, match=message) as caught:
        register(directory, "jsonl")
    assert caught.value.code == "invalid_dataset"


# --- malformed files and options, for the JSON formats ---


@pytest.mark.parametrize(
    "content,message",
    [
        ("{", r"ann.json: not valid JSON"),
        ('{"annotations": []}', r"ann.json: missing 'images'"),
        ('{"images": {}, "annotations": []}', r"ann.json: 'images' should be a list, got dict"),
        ('{"images": [{"id": 1}], "annotations": []}', r"ann.json: images\[0\]: missing 'file_name'"),
        ('{"images": [7], "annotations": []}', r"images\[0\]: expected a JSON object, got int"),
        (b"\xff\xfe\x00", r"ann.json: not a UTF-8 text file"),
    ],
)
def test_malformed_json_names_file_and_problem(tmp_path: Path, content: str | bytes, message: str) -> None:
    directory = tmp_path / "coco"
    directory.mkdir()
    path = directory / "ann.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(InvalidDataset, match=message):
        register(directory, "coco_captions", val_annotations="ann.json", val_images=".")


def test_missing_annotation_file(tmp_path: Path) -> None:
    (tmp_path / "coco").mkdir()
    with pytest.raises(InvalidDataset, match=r"missing\.json: file not found"):
        register(tmp_path / "coco", "coco_captions", val_annotations="missing.json")


@pytest.mark.parametrize("option", ["val_annotations", "root"])
def test_options_may_not_escape(tmp_path: Path, option: str) -> None:
    coco_captions(tmp_path / "coco")
    options = {"val_annotations": "annotations/captions_val2017.json", option: "../outside"}
    with pytest.raises(InvalidDataset, match=f"option '{option}': path '../outside' is outside"):
        register(tmp_path / "coco", "coco_captions", **options)


def test_image_folder_may_not_escape(tmp_path: Path) -> None:
    coco_captions(tmp_path / "coco")
    with pytest.raises(InvalidDataset, match="is outside the dataset directory"):
        register(tmp_path / "coco", "coco_captions", val_annotations="annotations/captions_val2017.json", images="..")


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDataset, match="no records"):
        register(tmp_path / "empty", "jsonl")


def test_unknown_format_and_bad_dataset_json(tmp_path: Path) -> None:
    directory = tmp_path / "x"
    directory.mkdir()
    DatasetInfo("x", "parquet", ["caption"]).save(directory)
    with pytest.raises(InvalidDataset, match="unknown format 'parquet'"):
        open_dataset(directory)
    (directory / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(InvalidDataset, match=r"x/dataset\.json"):
        open_dataset(directory)
    assert "shapes" in FORMATS and "jsonl" in FORMATS


# --- the registry of datasets under DATA_DIR ---


def test_registry_under_data_dir(tmp_path: Path) -> None:
    directory = coco_captions(dataset_path(tmp_path, "coco-mini"))
    register(directory, "coco_captions", val_annotations="annotations/captions_val2017.json")
    (tmp_path / "datasets/.staging-other-1234").mkdir()  # a fetch under way is not a dataset
    assert [info.name for info in list_datasets(tmp_path)] == ["coco-mini"]
    assert load_dataset(tmp_path, "coco-mini").splits() == [Split.VAL]
    with pytest.raises(DatasetNotFound) as caught:
        load_dataset(tmp_path, "nope")
    assert caught.value.code == "dataset_not_found"
    with pytest.raises(DatasetNotFound):
        open_dataset(tmp_path)
    for bad in ("../x", "A", ".hidden", "", "a/b"):
        with pytest.raises(InvalidArgument):
            dataset_path(tmp_path, bad)
    assert list_datasets(tmp_path / "nowhere") == []
