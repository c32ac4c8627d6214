"""Fetching datasets into place from a real local HTTP server; nothing half-written is registered."""

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from blip2.data.archives import ArchiveLimits
from blip2.data.download import DownloadProgress
from blip2.data.formats import FORMATS, list_datasets, load_dataset
from blip2.data.manifest import KNOWN_DATASETS, DatasetSource, FetchLimits, RemoteFile, fetch_dataset, fetch_url
from blip2.data.records import Split
from blip2.errors import (
    ArchiveTooLarge,
    ChecksumMismatch,
    DatasetExists,
    DatasetNotFound,
    DownloadCanceled,
    DownloadTooLarge,
    InvalidArgument,
    InvalidDataset,
    UnsafeArchive,
)
from tests.support.archives import tar_gz, zip_of
from tests.support.file_server import FileServer


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def custom_archive(lines: str | None = None) -> bytes:
    """A user's dataset as people pack it: one top folder with images and a JSON-lines file."""
    default = "\n".join(
        json.dumps({"image": f"img/{colour}.png", "caption": f"a {colour} square"}) for colour in ("red", "blue")
    )
    return tar_gz(
        {
            "mydata/img/red.png": png("red"),
            "mydata/img/blue.png": png("blue"),
            "mydata/train.jsonl": (default if lines is None else lines).encode(),
        }
    )


def leftovers(data_dir: Path) -> list[str]:
    folder = data_dir / "datasets"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_manifest_entries_are_well_formed() -> None:
    assert {"shapes", "coco2014-val", "coco2017-val", "coco-karpathy", "vqav2-val"} <= set(KNOWN_DATASETS)
    for name, source in KNOWN_DATASETS.items():
        assert source.format in FORMATS, name
        assert source.generated != bool(source.files), name
        for remote in source.files:
            assert remote.url.startswith(("http://", "https://"))
            assert remote.filename.endswith(".zip")
            assert remote.sha256 is None or len(remote.sha256) == 64
            assert remote.size is None or remote.size > 0


def test_fetch_shapes_generates_once(tmp_path: Path) -> None:
    info = fetch_dataset("shapes", tmp_path)
    assert (info.name, info.format, info.options["source"]) == ("shapes", "shapes", "manifest:shapes")
    assert info.splits == {"train": 4000, "val": 200, "test": 200}
    assert len(load_dataset(tmp_path, "shapes").captions(Split.TEST)) == 200
    stamp = (tmp_path / "datasets/shapes/dataset.json").stat().st_mtime_ns
    assert fetch_dataset("shapes", tmp_path) == info  # already there: nothing is redone
    assert (tmp_path / "datasets/shapes/dataset.json").stat().st_mtime_ns == stamp
    assert leftovers(tmp_path) == ["shapes"]


def test_unknown_manifest_entry(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="coco2017-val"):
        fetch_dataset("imagenet", tmp_path)


def test_fetch_manifest_entry_over_http(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotations = zip_of(
        {
            "annotations/captions_val2017.json": json.dumps(
                {
                    "images": [{"id": 5, "file_name": "000000000005.jpg"}],
                    "annotations": [{"image_id": 5, "caption": "a green square"}],
                }
            ).encode()
        }
    )
    images = zip_of({"val2017/000000000005.jpg": png("green")})
    source = DatasetSource(
        "A one-image COCO, served locally.",
        format="coco_captions",
        files=(
            RemoteFile(file_server.serve("/annotations.zip", annotations), sha(annotations), len(annotations), True),
            RemoteFile(file_server.serve("/val2017.zip", images, drop_first=True), sha(images), None, True),
        ),
        options={"val_annotations": "annotations/captions_val2017.json", "val_images": "val2017"},
    )
    monkeypatch.setitem(KNOWN_DATASETS, "mini-coco", source)
    seen: list[DownloadProgress] = []
    info = fetch_dataset("mini-coco", tmp_path, on_progress=seen.append)
    assert info.splits == {"val": 1}
    (record,) = load_dataset(tmp_path, "mini-coco").captions(Split.VAL)
    assert record.captions == ["a green square"]
    assert Image.open(record.image_path).getpixel((0, 0)) == (0, 128, 0)
    assert sorted(p.name for p in (tmp_path / "datasets/mini-coco").iterdir()) == [
        "annotations",
        "dataset.json",
        "val2017",
    ]  # the archives were deleted once extracted
    assert {p.url for p in seen if p.percent == 100.0} == {f.url for f in source.files}
    assert file_server.ranges("/val2017.zip")[1] is not None  # the dropped download resumed
    assert leftovers(tmp_path) == ["mini-coco"]


def test_fetch_url_registers_a_custom_archive(file_server: FileServer, tmp_path: Path) -> None:
    archive = custom_archive()
    url = file_server.serve("/mydata.tar.gz", archive)
    info = fetch_url(url, sha(archive), "mydata", "jsonl", tmp_path)
    assert info.options == {"root": "mydata", "source": url, "sha256": sha(archive)}
    assert (info.tasks, info.splits) == (["caption", "match"], {"train": 2})
    red, blue = load_dataset(tmp_path, "mydata").captions(Split.TRAIN)
    assert red.image_path == tmp_path / "datasets/mydata/mydata/img/red.png"
    assert Image.open(blue.image_path).getpixel((0, 0)) == (0, 0, 255)
    assert [i.name for i in list_datasets(tmp_path)] == ["mydata"]

    assert fetch_url(url, sha(archive).upper(), "mydata", "jsonl", tmp_path) == info
    assert len(file_server.requests) == 1  # the same source again is not downloaded again
    other = file_server.serve("/other.tar.gz", custom_archive())
    with pytest.raises(DatasetExists) as caught:
        fetch_url(other, sha(archive), "mydata", "jsonl", tmp_path)
    assert caught.value.code == "dataset_exists"
    with pytest.raises(DatasetExists):
        fetch_url(url, "0" * 64, "mydata", "jsonl", tmp_path)  # same URL, other checksum


def test_fetch_url_wrong_checksum_registers_nothing(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/mydata.tar.gz", custom_archive())
    with pytest.raises(ChecksumMismatch) as caught:
        fetch_url(url, "0" * 64, "mydata", "jsonl", tmp_path)
    assert caught.value.code == "checksum_mismatch"
    assert leftovers(tmp_path) == []  # no dataset, no staging folder, no part file
    assert len(file_server.requests) == 1


def test_fetch_url_escaping_archive_registers_nothing(file_server: FileServer, tmp_path: Path) -> None:
    archive = tar_gz({"mydata/train.jsonl": b"", "../../evil.txt": b"evil"})
    url = file_server.serve("/evil.tar.gz", archive)
    with pytest.raises(UnsafeArchive, match=r"evil\.txt"):
        fetch_url(url, sha(archive), "mydata", "jsonl", tmp_path)
    assert leftovers(tmp_path) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_fetch_url_malformed_dataset_registers_nothing(file_server: FileServer, tmp_path: Path) -> None:
    archive = custom_archive('{"image": "img/red.png"}\n')
    url = file_server.serve("/broken.tar.gz", archive)
    with pytest.raises(InvalidDataset, match=r"train.jsonl: line 1: missing 'captions'"):
        fetch_url(url, sha(archive), "broken", "jsonl", tmp_path)
    assert leftovers(tmp_path) == []


def test_fetch_url_cancel_removes_staging(file_server: FileServer, tmp_path: Path) -> None:
    archive = tar_gz({"mydata/big.bin": os.urandom(400_000), "mydata/train.jsonl": b""})  # incompressible
    url = file_server.serve("/big.tar.gz", archive)
    seen: list[DownloadProgress] = []
    with pytest.raises(DownloadCanceled):
        fetch_url(
            url, sha(archive), "big", "jsonl", tmp_path, on_progress=seen.append, should_stop=lambda: len(seen) > 1
        )
    assert seen and seen[-1].bytes_done < len(archive)  # stopped midway, with a part file in staging
    assert leftovers(tmp_path) == []


def test_fetch_url_checks_arguments_before_downloading(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/x.tar.gz", b"x")
    for sha256, name, format in [("abc", "x", "jsonl"), ("0" * 64, "x", "csv"), ("0" * 64, "../x", "jsonl")]:
        with pytest.raises(InvalidArgument):
            fetch_url(url, sha256, name, format, tmp_path)
    assert file_server.requests == []


def test_fetch_url_zip_bomb_registers_nothing(file_server: FileServer, tmp_path: Path) -> None:
    archive = zip_of({"mydata/train.jsonl": b"", "mydata/zeros.bin": bytes(8 << 20)}, zipfile.ZIP_DEFLATED)
    url = file_server.serve("/bomb.zip", archive)
    with pytest.raises(ArchiveTooLarge, match=r"zeros\.bin"):
        fetch_url(url, sha(archive), "bomb", "jsonl", tmp_path)  # the default limits
    assert leftovers(tmp_path) == []


def test_fetch_url_honours_the_archive_limits_given(file_server: FileServer, tmp_path: Path) -> None:
    archive = custom_archive()
    url = file_server.serve("/mydata.tar.gz", archive)
    limits = FetchLimits(archive=ArchiveLimits(max_members=2))
    with pytest.raises(ArchiveTooLarge, match="more than 2 members"):
        fetch_url(url, sha(archive), "mydata", "jsonl", tmp_path, limits=limits)
    assert leftovers(tmp_path) == []


def test_dataset_download_limit_counts_every_file(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = os.urandom(60_000), os.urandom(60_000)
    source = DatasetSource(
        "Two files that fit the limit one by one, not together.",
        format="jsonl",
        files=(
            RemoteFile(file_server.serve("/a.bin", first), sha(first), len(first), False),
            RemoteFile(file_server.serve("/b.bin", second), sha(second), len(second), False),
        ),
    )
    monkeypatch.setitem(KNOWN_DATASETS, "two-files", source)
    with pytest.raises(DownloadTooLarge, match=r"b\.bin: more than 40000 bytes"):
        fetch_dataset("two-files", tmp_path, limits=FetchLimits(max_download_bytes=100_000))
    assert leftovers(tmp_path) == []
