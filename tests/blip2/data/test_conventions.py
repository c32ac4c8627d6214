"""A user's archive in a public dataset's layout registers without options, its files found by their
names; one whose names say nothing is refused with the options to set, and registers with them."""

import hashlib
from pathlib import Path

import pytest

from blip2.data.conventions import conventional_options
from blip2.data.formats import load_dataset, option_names
from blip2.data.manifest import fetch_url
from blip2.data.records import DatasetInfo, Split
from blip2.errors import InvalidDataset
from tests.support.archives import zip_of
from tests.support.file_server import FileServer
from tests.support.public_datasets import (
    coco_archive,
    coco_captions,
    coco_with_names_of_its_own,
    karpathy_archive,
    vqav2_archive,
)


def fetch(file_server: FileServer, tmp_path: Path, archive: bytes, format: str, **options: str) -> DatasetInfo:
    url = file_server.serve("/dataset.zip", archive)
    return fetch_url(url, hashlib.sha256(archive).hexdigest(), "mine", format, tmp_path, options=options or None)


def every_image_exists(tmp_path: Path, split: Split) -> bool:
    records = load_dataset(tmp_path, "mine").captions(split)
    return bool(records) and all(record.image_path.is_file() for record in records)


def test_coco_captions_find_their_splits_and_image_folders(file_server: FileServer, tmp_path: Path) -> None:
    archive = coco_archive({"train": [1, 2, 3], "val": [4, 5]}, year=2017)

    info = fetch(file_server, tmp_path, archive, "coco_captions")

    assert info.splits == {"train": 3, "val": 2}
    assert info.options["train_annotations"] == "annotations/captions_train2017.json"
    assert every_image_exists(tmp_path, Split.TRAIN) and every_image_exists(tmp_path, Split.VAL)


def test_coco_in_a_top_folder_of_its_own(file_server: FileServer, tmp_path: Path) -> None:
    info = fetch(file_server, tmp_path, coco_archive({"val": [1, 2]}, year=2014, top="coco/"), "coco_captions")
    assert (info.options["root"], info.splits) == ("coco", {"val": 2})
    assert every_image_exists(tmp_path, Split.VAL)


def test_vqav2_finds_questions_answers_and_images(file_server: FileServer, tmp_path: Path) -> None:
    info = fetch(file_server, tmp_path, vqav2_archive([1, 2, 3]), "vqav2")

    assert (info.splits, info.tasks) == ({"val": 3}, ["vqa"])
    questions = load_dataset(tmp_path, "mine").questions(Split.VAL)
    assert [q.answers[0] for q in questions] == ["green", "blue", "yellow"], "the answers file was not found"
    assert all(q.image_path.is_file() for q in questions), "the images folder val2014 was not found"


def test_karpathy_splits_come_from_inside_its_file(file_server: FileServer, tmp_path: Path) -> None:
    archive = karpathy_archive({1: "train", 2: "restval", 3: "val", 4: "test", 5: "test"})

    info = fetch(file_server, tmp_path, archive, "coco_karpathy")

    assert info.splits == {"train": 2, "val": 1, "test": 2}
    assert info.options["annotations"] == "caption_datasets/dataset_coco.json"
    assert every_image_exists(tmp_path, Split.TEST)


def test_names_of_its_own_are_refused_with_the_options_to_set(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset) as caught:
        fetch(file_server, tmp_path, coco_with_names_of_its_own(), "coco_captions")

    message = str(caught.value)
    assert "has no records in any split" in message
    assert "options.train_annotations / options.val_annotations / options.test_annotations" in message
    assert "(found annotations/captions.json)" in message
    assert not (tmp_path / "datasets" / "mine").exists()


def test_names_of_its_own_register_with_options(file_server: FileServer, tmp_path: Path) -> None:
    archive = coco_with_names_of_its_own()

    info = fetch(
        file_server,
        tmp_path,
        archive,
        "coco_captions",
        val_annotations="annotations/captions.json",
        val_images="images",
    )

    assert info.splits == {"val": 3}
    assert every_image_exists(tmp_path, Split.VAL)


def test_options_that_name_files_turn_the_conventions_off(file_server: FileServer, tmp_path: Path) -> None:
    # A train file by COCO's name is there too, but the options chose val alone.
    archive = coco_archive({"train": [1, 2, 3], "val": [4, 5]})
    info = fetch(file_server, tmp_path, archive, "coco_captions", val_annotations="annotations/captions_val2017.json")
    assert info.splits == {"val": 2}


def test_two_files_for_one_split_are_not_guessed_between(tmp_path: Path) -> None:
    for year in (2014, 2017):
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / f"annotations/captions_val{year}.json").write_bytes(coco_captions([1]))
    with pytest.raises(
        InvalidDataset, match=r"captions_val2014\.json and .*captions_val2017\.json could be options\.val_annotations"
    ):
        conventional_options("coco_captions", tmp_path)


def test_an_empty_archive_says_it_found_no_data_file(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(
        InvalidDataset, match=r"set options\.annotations to its files \(found no \.json or \.jsonl file\)"
    ):
        fetch(file_server, tmp_path, zip_of({"readme.txt": b"nothing here"}), "coco_karpathy")


def test_option_names_follow_each_format() -> None:
    assert option_names("coco_karpathy") == ["annotations", "images", "root", "splits"]
    assert {"val_questions", "val_annotations", "val_image_pattern", "images"} <= set(option_names("vqav2"))
    assert "val_questions" not in option_names("coco_captions")
