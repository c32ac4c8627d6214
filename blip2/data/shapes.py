"""The synthetic `shapes` dataset: coloured shapes at named positions, described exactly.

Each 64x64 image shows one or two shapes on a white background. A small fixed grammar describes
it, so a small model can learn the data exactly and its scores mean something:

- caption: `a red circle on the left` (`an orange ...`), or two phrases joined by `and`, in `POSITIONS` order:
  `a red circle on the left and a blue square at the top` (`on the` left/right, `at the`
  top/bottom, `in the` center);
- questions: `what colour is the circle?` -> `red`, `what shape is on the left?` -> `circle`,
  `where is the red circle?` -> `left`, `how many shapes are there?` -> `one` | `two`, and one
  `is there a green star?` -> `yes` | `no` per image;
- retrieval pairs: each image with its caption.

The words come from `blip2.corpus`, so the tiny checkpoints' tokenizers know them. A scene never
repeats a shape kind, so every question has exactly one answer. Every possible scene (4,440) is
shuffled once by the seed; test takes the first ones, val the next, train the rest (cycling if it
asks for more), so no val or test scene was seen in training and no two images in a split share a
caption unless train cycles. Same seed, same bytes.
"""

import json
import math
import random
from dataclasses import dataclass
from itertools import combinations, permutations, product
from pathlib import Path

from PIL import Image, ImageDraw

from blip2.corpus import COLOURS, POSITIONS, SHAPES
from blip2.data.formats import register_dataset
from blip2.data.records import DatasetInfo, Split
from blip2.errors import InvalidArgument


def _subset(vocabulary: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[str, ...]:
    missing = set(wanted) - set(vocabulary)
    if missing:
        raise ValueError(f"not in blip2.corpus: {sorted(missing)}")
    return wanted


# Six hues far apart from each other and from the white background, so a 16-pixel shape is never
# mistaken for another colour (gray, white, pink and brown are left out for that reason).
PALETTE: dict[str, tuple[int, int, int]] = dict(
    zip(
        _subset(COLOURS, ("red", "green", "blue", "yellow", "purple", "orange")),
        ((220, 30, 30), (30, 160, 40), (30, 70, 220), (235, 205, 0), (140, 40, 170), (245, 130, 0)),
        strict=True,
    )
)
SHAPE_KINDS: tuple[str, ...] = _subset(SHAPES, ("circle", "square", "triangle", "star"))
PLACES: tuple[str, ...] = _subset(POSITIONS, ("left", "right", "top", "bottom", "center"))
DEFAULT_SIZES: dict[Split, int] = {Split.TRAIN: 2000, Split.VAL: 200, Split.TEST: 200}
BACKGROUND = (255, 255, 255)

_PREPOSITIONS = {"left": "on the", "right": "on the", "top": "at the", "bottom": "at the", "center": "in the"}
_COUNT_WORDS = ("zero", "one", "two")
# Offsets of a position's centre and a shape's radius, as fractions of the image side: at 64 px
# a shape spans 16 px and neighbouring shapes (left and center, say) stay 3 px apart.
_OFFSET = 0.3
_RADIUS = 0.125


@dataclass(frozen=True)
class Item:
    """One drawn shape."""

    colour: str
    shape: str
    position: str


Scene = tuple[Item, ...]  # one or two items, in PLACES order


def all_scenes() -> list[Scene]:
    """Every scene, in a fixed order: single shapes, then pairs at two places with two kinds."""
    singles: list[Scene] = [(Item(c, s, p),) for p, s, c in product(PLACES, SHAPE_KINDS, PALETTE)]
    pairs: list[Scene] = [
        (Item(c1, s1, p1), Item(c2, s2, p2))
        for (p1, p2), (s1, s2), c1, c2 in product(
            combinations(PLACES, 2), permutations(SHAPE_KINDS, 2), PALETTE, PALETTE
        )
    ]
    return singles + pairs


def position_centre(position: str, image_size: int) -> tuple[float, float]:
    """The (x, y) pixel centre of a named position."""
    dx, dy = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "center": (0, 0)}[position]
    middle = image_size / 2
    return middle + dx * _OFFSET * image_size, middle + dy * _OFFSET * image_size


def caption(scene: Scene) -> str:
    return " and ".join(
        f"{_a(item.colour)} {item.shape} {_PREPOSITIONS[item.position]} {item.position}" for item in scene
    )


def _a(word: str) -> str:
    """`word` with its indefinite article: "a red", "an orange"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs about `scene`; `rng` picks the yes/no question."""
    pairs = []
    for item in scene:
        pairs.append((f"what colour is the {item.shape}?", item.colour))
        pairs.append((f"what shape is {_PREPOSITIONS[item.position]} {item.position}?", item.shape))
        pairs.append((f"where is the {item.colour} {item.shape}?", item.position))
    pairs.append(("how many shapes are there?", _COUNT_WORDS[len(scene)]))
    pairs.append(_yes_no_question(scene, rng))
    return pairs


def _yes_no_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    present = {(item.colour, item.shape) for item in scene}
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
        return f"is there {_a(colour)} {shape}?", "yes"
    absent = sorted(set(product(PALETTE, SHAPE_KINDS)) - present)
    colour, shape = rng.choice(absent)
    return f"is there {_a(colour)} {shape}?", "no"


def draw(scene: Scene, image_size: int = 64) -> Image.Image:
    """The scene as an RGB image (no anti-aliasing: every shape pixel is exactly its colour)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    canvas = ImageDraw.Draw(image)
    for item in scene:
        _draw_item(canvas, item, position_centre(item.position, image_size), _RADIUS * image_size)
    return image


def _draw_item(canvas: ImageDraw.ImageDraw, item: Item, centre: tuple[float, float], radius: float) -> None:
    x, y = centre
    fill = PALETTE[item.colour]
    if item.shape == "circle":
        canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif item.shape == "square":
        half = radius * 0.85  # a square as wide as the circle looks larger; keep areas alike
        canvas.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif item.shape == "triangle":
        canvas.regular_polygon((x, y, radius), 3, fill=fill)
    else:
        canvas.polygon(_star_points(x, y, radius), fill=fill)


def _star_points(x: float, y: float, radius: float) -> list[tuple[float, float]]:
    # Five points, the inner corners at 45% of the radius: fat enough to fill at 64 px, thin
    # enough that it is not taken for a circle.
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def split_scenes(seed: int, sizes: dict[Split, int]) -> dict[Split, list[Scene]]:
    """Scenes per split: test first, then val, then train from what is left (cycling)."""
    scenes = all_scenes()
    random.Random(f"shapes-{seed}").shuffle(scenes)
    held_out = sizes.get(Split.TEST, 0) + sizes.get(Split.VAL, 0)
    if held_out > len(scenes) - 1:
        raise InvalidArgument(f"val + test ask for {held_out} scenes; shapes has {len(scenes)}, train needs one")
    test_end = sizes.get(Split.TEST, 0)
    train_pool = scenes[held_out:]
    n_train = sizes.get(Split.TRAIN, 0)
    return {
        Split.TEST: scenes[:test_end],
        Split.VAL: scenes[test_end:held_out],
        Split.TRAIN: [train_pool[i % len(train_pool)] for i in range(n_train)],
    }


def generate_shapes(
    directory: Path,
    *,
    seed: int = 0,
    sizes: dict[Split, int] | None = None,
    image_size: int = 64,
    name: str | None = None,
) -> DatasetInfo:
    """Write the dataset into `directory` and register it there (name: the folder's, by default).

    Layout: `images/<split>/<index>.png`, `<split>.jsonl` (captions) and `<split>_vqa.jsonl`
    (questions), read by the `jsonl` reader under the format name `shapes`.
    """
    if image_size < 32:
        raise InvalidArgument(f"image_size {image_size}: shapes need at least 32 pixels")
    wanted = DEFAULT_SIZES if sizes is None else sizes
    if any(count < 0 for count in wanted.values()):
        raise InvalidArgument(f"split sizes must not be negative: {wanted}")
    options = {"seed": str(seed), "image_size": str(image_size)}
    for split, scenes in split_scenes(seed, wanted).items():
        if scenes:
            _write_split(directory, split, scenes, random.Random(f"shapes-{seed}-{split}"), image_size)
            options |= {f"{split}_captions": f"{split}.jsonl", f"{split}_questions": f"{split}_vqa.jsonl"}
    info = DatasetInfo(name=name or directory.name, format="shapes", tasks=[], options=options)
    return register_dataset(directory, info)


def _write_split(directory: Path, split: Split, scenes: list[Scene], rng: random.Random, image_size: int) -> None:
    (directory / "images" / split).mkdir(parents=True, exist_ok=True)
    caption_lines, question_lines = [], []
    for index, scene in enumerate(scenes):
        image_id = f"{split}-{index:05d}"
        image = f"images/{split}/{index:05d}.png"
        draw(scene, image_size).save(directory / image, format="PNG")
        caption_lines.append({"id": image_id, "image": image, "caption": caption(scene)})
        for number, (question, answer) in enumerate(questions(scene, rng)):
            question_id = f"{image_id}-{number}"
            question_lines.append(
                {"id": image_id, "question_id": question_id, "image": image, "question": question, "answer": answer}
            )
    _write_jsonl(directory / f"{split}.jsonl", caption_lines)
    _write_jsonl(directory / f"{split}_vqa.jsonl", question_lines)


def _write_jsonl(path: Path, lines: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
