"""The datasets this service knows how to fetch, and fetching them (or a user's URL) into place.

`fetch_dataset("coco2017-val", data_dir)` downloads a manifest entry's files, verifies them,
extracts the archives and registers the result as `DATA_DIR/datasets/coco2017-val/`;
`fetch_url(url, sha256, name, format, data_dir)` does the same for an archive a user names.
`FetchLimits` bounds what a fetch may download and how far its archives may expand (zip bombs).

Nothing half-written is ever registered: all the work happens in a hidden
`DATA_DIR/datasets/.staging-<name>-<random>/` folder, which is renamed into place only once
`dataset.json` is written, and removed whatever happens otherwise (failure or cancel). The
provenance (manifest entry, or URL and sha256) is kept in `dataset.json`'s options, so fetching
the same thing again returns the registered dataset and fetching something else under a taken
name raises `DatasetExists`.
"""

import posixpath
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from blip2.data.archives import ArchiveLimits, extract_archive, is_archive
from blip2.data.download import DEFAULT_MAX_DOWNLOAD_BYTES, ProgressCallback, StopCheck, download_file
from blip2.data.formats import FORMATS, dataset_path, register_dataset, with_conventional_files
from blip2.data.records import DatasetInfo
from blip2.data.shapes import generate_shapes
from blip2.errors import DatasetExists, DatasetNotFound, InvalidArgument


@dataclass(frozen=True)
class RemoteFile:
    """One file to download; `sha256` and `size` are None where nobody publishes them."""

    url: str
    sha256: str | None
    size: int | None
    extract: bool  # an archive to unpack into the dataset folder (then deleted)

    @property
    def filename(self) -> str:
        return _safe_filename(self.url)


@dataclass(frozen=True)
class DatasetSource:
    """A manifest entry: where a dataset's files come from and how to read them once here."""

    description: str
    format: str
    files: tuple[RemoteFile, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    generated: bool = False  # made on this machine (shapes): nothing to download


# Neither COCO nor the VQA project nor Karpathy's page publishes checksums or exact byte sizes for
# these files, so they are None: verification here is the archive opening cleanly and the files
# reading as their format. Fill them in only from a publisher's own statement.
_COCO = "http://images.cocodataset.org"
_VQA = "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa"
_KARPATHY = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
_VAL2014_IMAGES = RemoteFile(f"{_COCO}/zips/val2014.zip", None, None, extract=True)  # about 6 GB

KNOWN_DATASETS: dict[str, DatasetSource] = {
    "shapes": DatasetSource(
        "Synthetic coloured shapes with captions, questions and retrieval pairs (generated locally).",
        format="shapes",
        generated=True,
    ),
    "coco2014-val": DatasetSource(
        "COCO 2014 validation images (40,504) with their captions.",
        format="coco_captions",
        files=(RemoteFile(f"{_COCO}/annotations/annotations_trainval2014.zip", None, None, True), _VAL2014_IMAGES),
        options={"val_annotations": "annotations/captions_val2014.json", "val_images": "val2014"},
    ),
    "coco2017-val": DatasetSource(
        "COCO 2017 validation images (5,000) with their captions.",
        format="coco_captions",
        files=(
            RemoteFile(f"{_COCO}/annotations/annotations_trainval2017.zip", None, None, True),
            RemoteFile(f"{_COCO}/zips/val2017.zip", None, None, True),  # about 1 GB
        ),
        options={"val_annotations": "annotations/captions_val2017.json", "val_images": "val2017"},
    ),
    "coco-karpathy": DatasetSource(
        # Karpathy's train split also uses train2014 (13 GB), which is not fetched: val and test only.
        "COCO Karpathy val/test splits (5,000 images each, from val2014), the standard caption benchmark.",
        format="coco_karpathy",
        files=(RemoteFile(_KARPATHY, None, None, True), _VAL2014_IMAGES),
        options={"annotations": "dataset_coco.json", "splits": "val,test"},
    ),
    "vqav2-val": DatasetSource(
        "VQAv2 validation questions (214k) with their ten human answers, on COCO val2014 images.",
        format="vqav2",
        files=(
            RemoteFile(f"{_VQA}/v2_Questions_Val_mscoco.zip", None, None, True),
            RemoteFile(f"{_VQA}/v2_Annotations_Val_mscoco.zip", None, None, True),
            _VAL2014_IMAGES,
        ),
        options={
            "val_questions": "v2_OpenEnded_mscoco_val2014_questions.json",
            "val_annotations": "v2_mscoco_val2014_annotations.json",
            "val_images": "val2014",
            "val_image_pattern": "COCO_val2014_%012d.jpg",
        },
    ),
}

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class FetchLimits:
    """How much one dataset fetch may download in all, and how far each of its archives may expand."""

    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


def fetch_dataset(
    name: str,
    data_dir: Path,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    client: httpx.Client | None = None,
    limits: FetchLimits = FetchLimits(),
) -> DatasetInfo:
    """Fetch (or generate) the manifest entry `name` and register it under that name."""
    if name not in KNOWN_DATASETS:
        raise DatasetNotFound(f"no dataset named {name!r} in the manifest (known: {', '.join(KNOWN_DATASETS)})")
    source = KNOWN_DATASETS[name]
    provenance = {"source": f"manifest:{name}"}

    def fill(staging: Path) -> DatasetInfo:
        if source.generated:
            generated = generate_shapes(staging, name=name)
            info = replace(generated, options=generated.options | provenance)
            info.save(staging)
            return info
        fetched = 0
        for remote in source.files:
            path = download_file(
                remote.url,
                staging / remote.filename,
                sha256=remote.sha256,
                expected_size=remote.size,
                on_progress=on_progress,
                should_stop=should_stop,
                max_bytes=limits.max_download_bytes - fetched,  # what the files before it left
                client=client,
            )
            fetched += path.stat().st_size
            if remote.extract:
                extract_archive(path, staging, limits=limits.archive)
                path.unlink()
        return register_dataset(staging, DatasetInfo(name, source.format, [], {}, dict(source.options) | provenance))

    return _fetch_into_place(name, data_dir, provenance, fill)


def fetch_url(
    url: str,
    sha256: str,
    name: str,
    format: str,
    data_dir: Path,
    *,
    options: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    client: httpx.Client | None = None,
    limits: FetchLimits = FetchLimits(),
) -> DatasetInfo:
    """Fetch a user's file (an archive is extracted) whose sha256 is known, and register it as `name`.

    `options` are the format's options (see `blip2.data.formats`). When the archive holds a single
    top-level folder and no `root` is given, that folder becomes the root. When they name none of
    the data files, files with the public datasets' names are found (`blip2.data.conventions`).
    """
    if not _SHA256.match(sha256):
        raise InvalidArgument(f"sha256 {sha256!r}: expected 64 hexadecimal digits")
    if format not in FORMATS:
        raise InvalidArgument(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    provenance = {"source": url, "sha256": sha256.lower()}

    def fill(staging: Path) -> DatasetInfo:
        path = download_file(
            url,
            staging / _safe_filename(url),
            sha256=sha256,
            on_progress=on_progress,
            should_stop=should_stop,
            max_bytes=limits.max_download_bytes,
            client=client,
        )
        if is_archive(path):
            extract_archive(path, staging, limits=limits.archive)
            path.unlink()
        chosen = dict(options or {})
        chosen.setdefault("root", _single_folder(staging))
        info = with_conventional_files(staging, DatasetInfo(name, format, [], {}, chosen | provenance))
        return register_dataset(staging, info)

    return _fetch_into_place(name, data_dir, provenance, fill)


def _fetch_into_place(
    name: str, data_dir: Path, provenance: dict[str, str], fill: Callable[[Path], DatasetInfo]
) -> DatasetInfo:
    """Run `fill` in a fresh staging folder and rename it into place, unless already registered."""
    target = dataset_path(data_dir, name)
    existing = _already_registered(target, provenance)
    if existing is not None:
        return existing
    staging = target.parent / f".staging-{name}-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        info = fill(staging)
        _publish(staging, target, provenance)
        return info
    finally:
        # After a successful rename there is nothing left here; after a failure, the partial work.
        shutil.rmtree(staging, ignore_errors=True)


def _already_registered(target: Path, provenance: dict[str, str]) -> DatasetInfo | None:
    """The dataset at `target` if it came from the same source, None if there is none."""
    if not (target / "dataset.json").is_file():
        return None
    info = DatasetInfo.load(target)
    if all(info.options.get(key) == value for key, value in provenance.items()):
        return info
    origin = info.options.get("source", "elsewhere")
    raise DatasetExists(f"dataset {info.name!r} is already registered (from {origin})")


def _publish(staging: Path, target: Path, provenance: dict[str, str]) -> None:
    try:
        staging.rename(target)  # atomic; replaces only an empty directory
    except OSError as exc:
        # A concurrent fetch of the same source got there first: that is as good as ours.
        if _already_registered(target, provenance) is None:
            raise DatasetExists(f"{target.name!r} exists and is not a registered dataset") from exc


def _single_folder(staging: Path) -> str:
    """The one top-level folder an archive unpacked into, or `.` when it unpacked several things."""
    entries = [entry for entry in staging.iterdir() if entry.name != "dataset.json"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0].name
    return "."


def _safe_filename(url: str) -> str:
    """The URL's last path segment when it is a plain file name, else `download`."""
    name = posixpath.basename(urlsplit(url).path)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name) and name != "dataset.json":
        return name
    return "download"
