"""One dataset interface over the formats users bring.

`open_dataset(directory)` reads `dataset.json` and returns a `Dataset` whose `captions(split)` and
`questions(split)` give the same records (`CaptionRecord`, `VqaRecord`) whatever the files were:

- `coco_captions`: COCO 2014/2017 caption annotations (`images` + `annotations`). Options:
  `<split>_annotations` (the JSON file; a split exists when this is set) and `<split>_images`
  (image folder; default `images`, else the folder the annotation file is named after:
  `captions_val2017.json` -> `val2017`).
- `coco_karpathy` / `flickr30k`: Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`;
  `restval` counts as train). Options: `annotations`, `images` (defaults `.` for COCO, where each
  entry carries its `filepath`, and `flickr30k-images` for Flickr30k).
- `vqav2`: questions + annotations JSON. Options: `<split>_questions` (a split exists when set),
  `<split>_annotations` (optional: test questions have no answers), `<split>_images`,
  `<split>_image_pattern` (printf style; default `COCO_<image folder name>_%012d.jpg`).
- `jsonl` (and `shapes`, which the generator writes in this format): a folder of images plus
  JSON-lines files. Options: `<split>_captions` (default `<split>.jsonl`) and `<split>_questions`
  (default `<split>.jsonl`); a line is `{"image", "caption" | "captions"}` or
  `{"image", "question", "answer" | "answers"}`, with optional `id` and `question_id`.

Every format also takes `root` (a sub-folder all its paths are relative to) and `splits` (a comma
list that narrows the splits offered, e.g. when only the val images were downloaded).

`option_names(format)` lists the options a format reads; `with_conventional_files` fills in the
data files a dataset's options leave unnamed from the public datasets' file names
(`blip2.data.conventions`); and a dataset with no records is refused with the options that would
name its files and the data files it does have.

Paths inside the files are untrusted: a path that is absolute or climbs out of the dataset directory
is refused with `InvalidDataset`, which always names the file and what is wrong in it.
"""

import json
import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from blip2.data.conventions import conventional_options, data_files
from blip2.data.records import CaptionRecord, DatasetInfo, Split, Task, VqaRecord
from blip2.errors import DatasetNotFound, InvalidArgument, InvalidDataset

T = TypeVar("T")
R = TypeVar("R")

DATASETS_FOLDER = "datasets"

# Lower-case, no separators: a name becomes a directory and appears in URLs and job inputs.
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Dataset(ABC):
    """A registered dataset's records, read lazily and kept once read."""

    # The options that name a split's data files (`{split}`: train, val and test each); without any
    # of them, and without the format's default files, a dataset has no records.
    split_files: tuple[str, ...] = ()
    # The format's other options, besides `root` and `splits`, which every format takes.
    other_options: tuple[str, ...] = ()

    def __init__(self, directory: Path, info: DatasetInfo) -> None:
        self.directory = directory
        self.info = info
        self.root = directory / _inside(info.options.get("root", "."), "dataset.json: option 'root'")
        self._captions: dict[Split, list[CaptionRecord]] = {}
        self._questions: dict[Split, list[VqaRecord]] = {}

    def splits(self) -> list[Split]:
        """The splits this dataset offers, in train/val/test order."""
        wanted = self.info.options.get("splits")
        allowed = {s.strip() for s in wanted.split(",")} if wanted else {s.value for s in Split}
        return [split for split in Split if split.value in allowed and self._has_split(split)]

    def captions(self, split: Split) -> list[CaptionRecord]:
        """One record per image with its reference captions (also the retrieval pairs)."""
        self._require(split, "caption", (Task.CAPTION, Task.MATCH))
        return _cached(self._captions, split, self._read_captions)

    def questions(self, split: Split) -> list[VqaRecord]:
        """One record per question, with the human answers."""
        self._require(split, "question/answer", (Task.VQA,))
        return _cached(self._questions, split, self._read_questions)

    def path(self, relative: str, where: str) -> Path:
        """`relative` (from a data file or an option) as a path inside the dataset's root."""
        return self.root / _inside(relative, where)

    def option(self, key: str, default: str) -> str:
        return self.info.options.get(key) or default

    def json_option(self, key: str, default: str = "") -> tuple[str, Any]:
        """The JSON file that option `key` names: its name (for error messages) and its content."""
        name = self.option(key, default)
        return name, read_json(self.path(name, f"dataset.json: option {key!r}"), name)

    def _require(self, split: Split, kind: str, tasks: tuple[Task, ...]) -> None:
        if self.info.tasks and not any(task.value in self.info.tasks for task in tasks):
            raise InvalidArgument(f"dataset {self.info.name!r} has no {kind} data")
        if split not in self.splits():
            raise InvalidArgument(f"dataset {self.info.name!r} has no {split.value!r} split")

    @abstractmethod
    def _has_split(self, split: Split) -> bool: ...

    def _read_captions(self, split: Split) -> list[CaptionRecord]:
        return []

    def _read_questions(self, split: Split) -> list[VqaRecord]:
        return []


class CocoCaptions(Dataset):
    """COCO caption annotations: `images[{id, file_name}]` + `annotations[{image_id, caption}]`."""

    split_files = ("{split}_annotations",)
    other_options = ("{split}_images", "images")

    def _has_split(self, split: Split) -> bool:
        return bool(self.info.options.get(f"{split}_annotations"))

    def _read_captions(self, split: Split) -> list[CaptionRecord]:
        source, data = self.json_option(f"{split}_annotations")
        folder = self._image_folder(split, source)
        files: dict[str, str] = {}
        for i, image in enumerate(field(data, "images", list, source)):
            where = f"{source}: images[{i}]"
            files[id_field(image, "id", where)] = field(image, "file_name", str, where)
        captions: dict[str, list[str]] = {image_id: [] for image_id in files}
        for i, annotation in enumerate(field(data, "annotations", list, source)):
            where = f"{source}: annotations[{i}]"
            image_id = id_field(annotation, "image_id", where)
            if image_id not in captions:
                raise InvalidDataset(f"{where}: image_id {image_id} is not in 'images'")
            captions[image_id].append(field(annotation, "caption", str, where).strip())
        return [
            CaptionRecord(image_id, self.path(posixpath.join(folder, files[image_id]), source), texts)
            for image_id, texts in captions.items()
            if texts
        ]

    def _image_folder(self, split: Split, annotation_file: str) -> str:
        # COCO names its annotation files after the image folder: captions_val2017.json -> val2017.
        derived = Path(annotation_file).stem.removeprefix("captions_")
        return self.option(f"{split}_images", self.option("images", derived))


class Karpathy(Dataset):
    """Karpathy's split files: `images[{filepath?, filename, split, sentences[{raw}], cocoid?}]`."""

    split_files = ("annotations",)
    other_options = ("images",)
    default_annotations = "dataset_coco.json"
    default_images = "."

    def __init__(self, directory: Path, info: DatasetInfo) -> None:
        super().__init__(directory, info)
        self._all: list[tuple[Split, CaptionRecord]] | None = None

    def _has_split(self, split: Split) -> bool:
        named = self.info.options.get("annotations")
        if not named and not self.path(self.default_annotations, "the default annotations").is_file():
            return False  # nothing named, nothing at the default place: no data (a named file must exist)
        return any(entry_split == split for entry_split, _ in self._entries())

    def _read_captions(self, split: Split) -> list[CaptionRecord]:
        return [record for entry_split, record in self._entries() if entry_split == split]

    def _entries(self) -> list[tuple[Split, CaptionRecord]]:
        # One file holds every split; read it once and keep all of it.
        if self._all is None:
            source, data = self.json_option("annotations", self.default_annotations)
            images = field(data, "images", list, source)
            self._all = [self._entry(image, f"{source}: images[{i}]") for i, image in enumerate(images)]
        return self._all

    def _entry(self, image: object, where: str) -> tuple[Split, CaptionRecord]:
        name = field(image, "filename", str, where)
        folder = posixpath.join(self.option("images", self.default_images), optional(image, "filepath", str, where))
        split_name = field(image, "split", str, where)
        split = _karpathy_split(split_name, where)
        sentences = field(image, "sentences", list, where)
        captions = [field(s, "raw", str, f"{where}.sentences[{j}]").strip() for j, s in enumerate(sentences)]
        image_id = id_field(image, "cocoid", where) if _has(image, "cocoid") else Path(name).stem
        return split, CaptionRecord(image_id, self.path(posixpath.join(folder, name), where), captions)


class Flickr30k(Karpathy):
    default_annotations = "dataset_flickr30k.json"
    default_images = "flickr30k-images"


class Vqav2(Dataset):
    """VQAv2: `{"questions": [{question_id, image_id, question}]}` + `{"annotations": [...answers}]}`."""

    split_files = ("{split}_questions",)
    other_options = ("{split}_annotations", "{split}_images", "{split}_image_pattern", "images")

    def _has_split(self, split: Split) -> bool:
        return bool(self.info.options.get(f"{split}_questions"))

    def _read_questions(self, split: Split) -> list[VqaRecord]:
        source, data = self.json_option(f"{split}_questions")
        answers = self._answers(split)
        folder = self.option(f"{split}_images", self.option("images", "."))
        pattern = self.option(f"{split}_image_pattern", f"COCO_{Path(folder).name}_%012d.jpg")
        records: list[VqaRecord] = []
        for i, question in enumerate(field(data, "questions", list, source)):
            where = f"{source}: questions[{i}]"
            question_id = id_field(question, "question_id", where)
            image_id = field(question, "image_id", int, where)
            if answers is not None and question_id not in answers:
                raise InvalidDataset(f"{where}: question {question_id} has no annotation")
            image = self.path(posixpath.join(folder, _image_name(pattern, image_id)), where)
            text = field(question, "question", str, where)
            got = answers[question_id] if answers is not None else []
            records.append(VqaRecord(question_id, str(image_id), image, text, got))
        return records

    def _answers(self, split: Split) -> dict[str, list[str]] | None:
        if not self.info.options.get(f"{split}_annotations"):
            return None
        source, data = self.json_option(f"{split}_annotations")
        answers: dict[str, list[str]] = {}
        for i, annotation in enumerate(field(data, "annotations", list, source)):
            where = f"{source}: annotations[{i}]"
            given = [field(a, "answer", str, where) for a in field(annotation, "answers", list, where)]
            # A few annotation files carry only the consensus answer.
            answers[id_field(annotation, "question_id", where)] = given or [
                field(annotation, "multiple_choice_answer", str, where)
            ]
        return answers


class Jsonl(Dataset):
    """A folder of images plus JSON lines of captions and/or question/answer pairs."""

    split_files = ("{split}_captions", "{split}_questions")

    def _has_split(self, split: Split) -> bool:
        files = {self._file(split, "captions"), self._file(split, "questions")}
        return any(self.path(name, f"dataset.json: files of split {split}").is_file() for name in files)

    def _read_captions(self, split: Split) -> list[CaptionRecord]:
        merged: dict[str, CaptionRecord] = {}  # several lines may caption the same image
        for where, line in self._lines(self._file(split, "captions")):
            if "question" in line:
                continue
            texts = _texts(line, "caption", "captions", where)
            image = field(line, "image", str, where)
            if image not in merged:
                image_id = _optional_id(line, "id", where) or image
                merged[image] = CaptionRecord(image_id, self.path(image, where), [])
            merged[image].captions.extend(texts)
        return list(merged.values())

    def _read_questions(self, split: Split) -> list[VqaRecord]:
        records: list[VqaRecord] = []
        for where, line in self._lines(self._file(split, "questions")):
            if "question" not in line:
                continue
            image = field(line, "image", str, where)
            image_id = _optional_id(line, "id", where) or image
            question_id = _optional_id(line, "question_id", where) or f"{split}-{len(records)}"
            answers = _texts(line, "answer", "answers", where)
            question = field(line, "question", str, where)
            records.append(VqaRecord(question_id, image_id, self.path(image, where), question, answers))
        return records

    def _file(self, split: Split, kind: str) -> str:
        return self.option(f"{split}_{kind}", f"{split}.jsonl")

    def _lines(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        path = self.path(name, "dataset.json: a jsonl file option")
        if not path.is_file():
            return []
        out = []
        for number, text in enumerate(_read_text(path, name).splitlines(), start=1):
            if text.strip():
                out.append((f"{name}: line {number}", _parse_line(text, f"{name}: line {number}")))
        return out


_FORMATS: dict[str, type[Dataset]] = {
    "coco_captions": CocoCaptions,
    "coco_karpathy": Karpathy,
    "flickr30k": Flickr30k,
    "vqav2": Vqav2,
    "jsonl": Jsonl,
    "shapes": Jsonl,  # the synthetic generator writes JSON lines
}
FORMATS: tuple[str, ...] = tuple(_FORMATS)


_COMMON_OPTIONS = ("root", "splits")


def option_names(format: str) -> list[str]:
    """Every option a dataset in `format` reads (see the module docstring)."""
    reader = _reader(format)
    return _expand((*reader.split_files, *reader.other_options, *_COMMON_OPTIONS))


def split_file_options(format: str) -> list[str]:
    """The options that name a dataset's data files, split by split, in `format`."""
    return _expand(_reader(format).split_files)


def with_conventional_files(directory: Path, info: DatasetInfo) -> DatasetInfo:
    """`info` with the data files found by their conventional names, unless its options name any."""
    if any(name in info.options for name in split_file_options(info.format)):
        return info
    root = dataset_for(directory, info).root  # checked to be inside `directory`
    return replace(info, options=conventional_options(info.format, root) | info.options)


def open_dataset(directory: Path) -> Dataset:
    """The dataset registered in `directory` (its `dataset.json` says how to read it)."""
    if not (directory / "dataset.json").is_file():
        raise DatasetNotFound(f"no dataset.json in {directory.name!r}")
    try:
        info = DatasetInfo.load(directory)
    except (ValueError, TypeError) as exc:
        raise InvalidDataset(f"{directory.name}/dataset.json: {exc}") from exc
    return dataset_for(directory, info)


def dataset_for(directory: Path, info: DatasetInfo) -> Dataset:
    """A reader for `directory` in `info.format`, registered or not."""
    return _reader(info.format)(directory, info)


def _reader(format: str) -> type[Dataset]:
    if format not in _FORMATS:
        raise InvalidDataset(f"dataset.json: unknown format {format!r} (known: {', '.join(FORMATS)})")
    return _FORMATS[format]


def _expand(templates: tuple[str, ...]) -> list[str]:
    """Option names, each `{split}` template once per split."""
    splits = [split.value for split in Split]
    return [t.format(split=s) for t in templates for s in (splits if "{split}" in t else [""])]


def register_dataset(directory: Path, info: DatasetInfo) -> DatasetInfo:
    """Read every split once, then write `dataset.json` with its record counts and tasks.

    A split's count is its number of images with captions, or its number of questions where it
    has no captions. Tasks follow from what is there: captions give `caption` and `match`,
    question/answer pairs give `vqa`. A dataset with no records at all is refused.
    """
    dataset = dataset_for(directory, replace(info, tasks=[], splits={}))
    counts: dict[str, int] = {}
    tasks: set[Task] = set()
    for split in dataset.splits():
        captions, questions = dataset.captions(split), dataset.questions(split)
        counts[split.value] = len(captions) or len(questions)
        tasks |= {Task.CAPTION, Task.MATCH} if captions else set()
        tasks |= {Task.VQA} if questions else set()
    if not tasks:
        raise InvalidDataset(f"dataset {info.name!r} has no records in any split; {_naming_hint(dataset)}")
    registered = replace(info, tasks=[task.value for task in Task if task in tasks], splits=counts)
    registered.save(directory)
    return registered


def _naming_hint(dataset: Dataset) -> str:
    """Which options would name the dataset's files, and which data files it has."""
    options = " / ".join(f"options.{name}" for name in split_file_options(dataset.info.format))
    found = [path.relative_to(dataset.root).as_posix() for path in data_files(dataset.root)]
    listed = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return f"set {options} to its files (found {listed or 'no .json or .jsonl file'})"


def check_name(name: str) -> str:
    """`name` if it can be a dataset's directory name, else `InvalidArgument`."""
    if not _NAME_PATTERN.match(name):
        raise InvalidArgument(f"dataset name {name!r}: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
    return name


def dataset_path(data_dir: Path, name: str) -> Path:
    """Where the dataset `name` is (or would be) registered."""
    return data_dir / DATASETS_FOLDER / check_name(name)


def load_dataset(data_dir: Path, name: str) -> Dataset:
    """The registered dataset `name`, or `DatasetNotFound`."""
    directory = dataset_path(data_dir, name)
    if not (directory / "dataset.json").is_file():
        raise DatasetNotFound(f"no dataset named {name!r} is registered")
    return open_dataset(directory)


def list_datasets(data_dir: Path) -> list[DatasetInfo]:
    """Every registered dataset, by name (staging folders of fetches under way are skipped)."""
    folder = data_dir / DATASETS_FOLDER
    if not folder.is_dir():
        return []
    found = [d for d in sorted(folder.iterdir()) if not d.name.startswith(".") and (d / "dataset.json").is_file()]
    return [DatasetInfo.load(d) for d in found]


# --- reading untrusted JSON: every failure names the file and the place in it ---


def read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(_read_text(path, name))
    except json.JSONDecodeError as exc:
        raise InvalidDataset(f"{name}: not valid JSON ({exc})") from exc


def field(obj: object, key: str, kind: type[T], where: str) -> T:
    """`obj[key]`, which must exist and be a `kind`."""
    if not isinstance(obj, dict):
        raise InvalidDataset(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise InvalidDataset(f"{where}: missing {key!r}")
    value = obj[key]
    # bool is an int to Python, but never a valid id or count in these files.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidDataset(f"{where}: {key!r} should be {_json_type(kind)}, got {type(value).__name__}")
    return value


def optional(obj: object, key: str, kind: type[str], where: str) -> str:
    return field(obj, key, kind, where) if _has(obj, key) else ""


def id_field(obj: object, key: str, where: str) -> str:
    """An id, which the public formats write as a number and custom data often as a string."""
    value = field(obj, key, object, where)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidDataset(f"{where}: {key!r} should be a number or a string")
    return str(value)


def _optional_id(obj: object, key: str, where: str) -> str:
    return id_field(obj, key, where) if _has(obj, key) else ""


def _has(obj: object, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


def _texts(line: dict[str, Any], one: str, many: str, where: str) -> list[str]:
    """`line[one]` as a list, or `line[many]`: a non-empty list of strings."""
    if one in line:
        return [field(line, one, str, where)]
    texts = field(line, many, list, where)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidDataset(f"{where}: {many!r} should be a non-empty list of strings (or give {one!r})")
    return texts


def _parse_line(text: str, where: str) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidDataset(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(line, dict):
        raise InvalidDataset(f"{where}: expected a JSON object")
    return line


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidDataset(f"{name}: file not found") from exc
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise InvalidDataset(f"{name}: not a UTF-8 text file") from exc


def _inside(relative: str, where: str) -> str:
    """`relative`, normalised, if it stays inside the folder it is relative to.

    The check is on the text, not on the resolved path: archives are refused at extraction when
    their links escape, so a symlink found here was put there by whoever runs the service (an
    image folder on another disk, say) and is trusted.
    """
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise InvalidDataset(f"{where}: path {relative!r} is outside the dataset directory")
    return normal


def _karpathy_split(name: str, where: str) -> Split:
    # Karpathy's "restval" is the part of COCO val2014 outside his 5k val/test: it trains.
    if name == "restval":
        return Split.TRAIN
    try:
        return Split(name)
    except ValueError:
        raise InvalidDataset(f"{where}: unknown split {name!r}") from None


def _image_name(pattern: str, image_id: int) -> str:
    try:
        return pattern % image_id
    except (TypeError, ValueError) as exc:
        raise InvalidDataset(f"dataset.json: image pattern {pattern!r} does not take one number") from exc


def _json_type(kind: type) -> str:
    return {str: "a string", int: "a number", list: "a list", dict: "an object"}.get(kind, kind.__name__)


def _cached(store: dict[Split, list[R]], split: Split, read: Callable[[Split], list[R]]) -> list[R]:
    if split not in store:
        store[split] = read(split)
    return store[split]
