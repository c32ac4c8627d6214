"""The synthetic `shapes` dataset: coloured shapes at named positions, described exactly.

Each 64x64 image shows one or two shapes on a light background. A small fixed grammar describes
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

Every image is drawn a little differently, as a user's own drawing would be: the background's
tint, each colour's exact shade (this palette's, or the named colours of PIL, CSS and Paint), the
shape's size, place and tilt, drawn at another size and scaled down (anti-aliased or not) and
sometimes saved as a JPEG. A model trained on it answers for a shape drawn by another tool, not
only for this generator's pixels. `draw(scene)` without a random source draws the plain image.
"""

import io
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
# Train: nearly every scene val and test leave (4,040), each drawn once.
DEFAULT_SIZES: dict[Split, int] = {Split.TRAIN: 4000, Split.VAL: 200, Split.TEST: 200}
BACKGROUND = (255, 255, 255)
RGB = tuple[int, int, int]
# Other shades a user's drawing tool calls by the same name: PIL's and CSS's named colour, Paint's swatch.
SHADES: dict[str, tuple[RGB, ...]] = {
    "red": ((255, 0, 0), (237, 28, 36)),
    "green": ((0, 128, 0), (0, 200, 0), (34, 177, 76)),
    "blue": ((0, 0, 255), (63, 72, 204)),
    "yellow": ((255, 255, 0), (255, 242, 0)),
    "purple": ((128, 0, 128), (163, 73, 164)),
    "orange": ((255, 165, 0), (255, 127, 39)),
}

_PREPOSITIONS = {"left": "on the", "right": "on the", "top": "at the", "bottom": "at the", "center": "in the"}
_COUNT_WORDS = ("zero", "one", "two")
# Offsets of a position's centre and a shape's radius, as fractions of the image side: at 64 px
# a shape spans 16 px and neighbouring shapes (left and center, say) stay 3 px apart.
_OFFSET = 0.3
_RADIUS = 0.125
# How far a varied drawing strays from the plain one: radius (as a fraction of the side), centre
# offset (likewise; neighbours still never touch), tilt in degrees, shade per channel.
_RADIUS_RANGE = (0.085, 0.135)
_NUDGE = 0.01
_TILT = 20.0
_SHADE_JITTER = 12
_SUPERSAMPLING = (1, 2, 3, 4)  # drawn at this many times the size, then scaled down (1: aliased, as drawn)
_RESAMPLING = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


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


@dataclass(frozen=True)
class Stroke:
    """One shape as drawn: its fill, centre and radius in pixels, and tilt in degrees."""

    shape: str
    fill: RGB
    centre: tuple[float, float]
    radius: float
    tilt: float = 0.0

    def scaled(self, factor: int) -> "Stroke":
        x, y = self.centre
        return Stroke(self.shape, self.fill, (x * factor, y * factor), self.radius * factor, self.tilt)


def draw(scene: Scene, image_size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """The scene as an RGB image: plain without `rng` (no anti-aliasing, every shape pixel exactly
    its colour), else varied as the module docstring says."""
    if rng is None:
        strokes = [Stroke(i.shape, PALETTE[i.colour], position_centre(i.position, image_size), _RADIUS * image_size)
                   for i in scene]  # fmt: skip
        return _render(strokes, image_size, BACKGROUND)
    strokes = [_varied_stroke(item, image_size, rng) for item in scene]
    image = _render(strokes, image_size, _background(rng), rng.choice(_SUPERSAMPLING), rng.choice(_RESAMPLING))
    return _jpeg_round_trip(image, rng.randint(40, 95)) if rng.random() < 0.5 else image


def _varied_stroke(item: Item, image_size: int, rng: random.Random) -> Stroke:
    x, y = position_centre(item.position, image_size)
    nudge = _NUDGE * image_size
    centre = (x + rng.uniform(-nudge, nudge), y + rng.uniform(-nudge, nudge))
    radius = rng.uniform(*_RADIUS_RANGE) * image_size
    return Stroke(item.shape, _shade(item.colour, rng), centre, radius, rng.uniform(-_TILT, _TILT))


def _shade(colour: str, rng: random.Random) -> RGB:
    base = rng.choice((PALETTE[colour], *SHADES[colour]))
    r, g, b = (min(255, max(0, c + rng.randint(-_SHADE_JITTER, _SHADE_JITTER))) for c in base)
    return r, g, b


def _background(rng: random.Random) -> RGB:
    """White half the time, else a light tint (every channel at least 215: far lighter than any shape)."""
    if rng.random() < 0.5:
        return BACKGROUND
    r, g, b = (rng.randint(215, 255) for _ in range(3))
    return r, g, b


def _render(
    strokes: list[Stroke],
    image_size: int,
    background: RGB,
    supersampling: int = 1,
    resampling: Image.Resampling = Image.Resampling.BOX,
) -> Image.Image:
    side = image_size * supersampling
    image = Image.new("RGB", (side, side), background)
    canvas = ImageDraw.Draw(image)
    for stroke in strokes:
        _draw_stroke(canvas, stroke.scaled(supersampling))
    return image if supersampling == 1 else image.resize((image_size, image_size), resampling)


def _draw_stroke(canvas: ImageDraw.ImageDraw, stroke: Stroke) -> None:
    x, y = stroke.centre
    radius = stroke.radius
    if stroke.shape == "circle":
        canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=stroke.fill)
    elif stroke.shape == "square":
        # A square as wide as the circle looks larger; keep areas alike.
        canvas.regular_polygon((x, y, radius * 0.85 * math.sqrt(2)), 4, rotation=stroke.tilt, fill=stroke.fill)
    elif stroke.shape == "triangle":
        canvas.regular_polygon((x, y, radius), 3, rotation=stroke.tilt, fill=stroke.fill)
    else:
        canvas.polygon(_star_points(x, y, radius, stroke.tilt), fill=stroke.fill)


def _star_points(x: float, y: float, radius: float, tilt: float = 0.0) -> list[tuple[float, float]]:
    # Five points, the inner corners at 45% of the radius: fat enough to fill at 64 px, thin
    # enough that it is not taken for a circle.
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5 + math.radians(tilt)
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    return points


def _jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """The image as a JPEG of this quality would decode: blurred edges, shifted shades."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


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
            _write_split(directory, split, scenes, f"shapes-{seed}-{split}", image_size)
            options |= {f"{split}_captions": f"{split}.jsonl", f"{split}_questions": f"{split}_vqa.jsonl"}
    info = DatasetInfo(name=name or directory.name, format="shapes", tasks=[], options=options)
    return register_dataset(directory, info)


def _write_split(directory: Path, split: Split, scenes: list[Scene], seed: str, image_size: int) -> None:
    (directory / "images" / split).mkdir(parents=True, exist_ok=True)
    # Two random sources: how images are drawn may change without changing the questions.
    question_rng, drawing_rng = random.Random(seed), random.Random(f"{seed}-drawing")
    caption_lines, question_lines = [], []
    for index, scene in enumerate(scenes):
        image_id = f"{split}-{index:05d}"
        image = f"images/{split}/{index:05d}.png"
        draw(scene, image_size, drawing_rng).save(directory / image, format="PNG")
        caption_lines.append({"id": image_id, "image": image, "caption": caption(scene)})
        for number, (question, answer) in enumerate(questions(scene, question_rng)):
            question_id = f"{image_id}-{number}"
            question_lines.append(
                {"id": image_id, "question_id": question_id, "image": image, "question": question, "answer": answer}
            )
    _write_jsonl(directory / f"{split}.jsonl", caption_lines)
    _write_jsonl(directory / f"{split}_vqa.jsonl", question_lines)


def _write_jsonl(path: Path, lines: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
