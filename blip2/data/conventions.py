"""Which file is which in a dataset nobody described: the names COCO, VQAv2 and Karpathy publish.

The public datasets name their files after what they hold: `captions_val2017.json` is COCO's
val captions and its images are in `val2017/`; `v2_OpenEnded_mscoco_val2014_questions.json` and
`v2_mscoco_val2014_annotations.json` are VQAv2's val questions and answers, on the images in
`val2014/`; `dataset_coco.json` is Karpathy's split file, which holds every split itself. So a user's
archive of such files needs no options: `conventional_options(format, root)` finds them anywhere
under the dataset's root and answers the options the format reads (`blip2.data.formats`), with
paths relative to the root. An image folder is set only where a folder of that name exists.

Two files that would set the same option (captions_val2014.json and captions_val2017.json) are an
`InvalidDataset` naming both: which one was meant is for the user to say.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from blip2.errors import InvalidDataset

DATA_FILE_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Convention:
    """A file name that says what the file is, and the option it answers.

    `pattern` matches the whole name; its group `split` (train, val or test) fills `{split}` in
    the option names, and `year` with it names the split's image folder (`val` + `2014`).
    """

    pattern: re.Pattern[str]
    option: str
    images: str | None = None  # the option for the split's image folder, set when that folder exists


_SPLIT = r"(?P<split>train|val|test)"
CONVENTIONS: dict[str, tuple[Convention, ...]] = {
    "coco_captions": (
        Convention(re.compile(rf"captions_{_SPLIT}(?P<year>\d{{4}})?\.json"), "{split}_annotations", "{split}_images"),
    ),
    "coco_karpathy": (Convention(re.compile(r"dataset_coco\.json"), "annotations"),),
    "flickr30k": (Convention(re.compile(r"dataset_flickr30k\.json"), "annotations"),),
    "vqav2": (
        Convention(
            re.compile(rf"v2_OpenEnded_mscoco_{_SPLIT}(?P<year>\d{{4}})_questions\.json"),
            "{split}_questions",
            "{split}_images",
        ),
        Convention(re.compile(rf"v2_mscoco_{_SPLIT}(?P<year>\d{{4}})_annotations\.json"), "{split}_annotations"),
    ),
}


def conventional_options(format: str, root: Path) -> dict[str, str]:
    """The options that the names of the files under `root` give, for a dataset in `format`."""
    found: dict[str, str] = {}
    for path in data_files(root):
        for convention in CONVENTIONS.get(format, ()):
            match = convention.pattern.fullmatch(path.name)
            if match is not None:
                _add(found, _options(convention, match, path, root))
    return found


def data_files(root: Path) -> list[Path]:
    """The JSON and JSON-lines files under `root`, the shallowest first."""
    files = (path for path in root.rglob("*") if path.suffix in DATA_FILE_SUFFIXES and path.is_file())
    return sorted(files, key=lambda path: (len(path.parts), str(path)))


def _options(convention: Convention, match: re.Match[str], path: Path, root: Path) -> dict[str, str]:
    split = match.groupdict().get("split") or ""
    options = {convention.option.format(split=split): path.relative_to(root).as_posix()}
    folder = _folder_named(root, split + (match.groupdict().get("year") or ""))
    if convention.images is not None and folder is not None:
        options[convention.images.format(split=split)] = folder
    return options


def _folder_named(root: Path, name: str) -> str | None:
    """The shallowest folder under `root` called `name`, relative to `root`."""
    folders = [path for path in root.rglob(name) if path.is_dir()]
    if not folders:
        return None
    return min(folders, key=lambda path: (len(path.parts), str(path))).relative_to(root).as_posix()


def _add(found: dict[str, str], options: dict[str, str]) -> None:
    for key, value in options.items():
        if found.get(key, value) != value:
            raise InvalidDataset(f"both {found[key]} and {value} could be options.{key}; set it to the one meant")
        found[key] = value
