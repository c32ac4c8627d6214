"""Loaded tiny models, shared by the blip2 tests (loading is the slow part)."""

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from blip2.loading import LoadedModel, LoadOptions, load_model

_cache: dict[tuple[str, str], LoadedModel] = {}


def loaded(name: str, data_dir: Path, quantize: str = "none") -> LoadedModel:
    """A tiny model, loaded once per session and quantization."""
    key = (name, quantize)
    if key not in _cache:
        _cache[key] = load_model(name, data_dir=data_dir, options=LoadOptions(quantize=quantize))
    return _cache[key]


@pytest.fixture(scope="session")
def opt(tiny_data_dir: Path) -> LoadedModel:
    return loaded("tiny-opt", tiny_data_dir)


@pytest.fixture(scope="session")
def t5(tiny_data_dir: Path) -> LoadedModel:
    return loaded("tiny-t5", tiny_data_dir)


@pytest.fixture(scope="session")
def instruct_model(tiny_data_dir: Path) -> LoadedModel:
    return loaded("tiny-instruct", tiny_data_dir)


@pytest.fixture(scope="session")
def itm(tiny_data_dir: Path) -> LoadedModel:
    return loaded("tiny-itm", tiny_data_dir)


@pytest.fixture(scope="session")
def shapes() -> list[Image.Image]:
    """Generated images: a coloured shape on a plain background, each different."""
    out = []
    for colour, box in [("red", (8, 8, 40, 40)), ("blue", (20, 4, 60, 30)), ("green", (2, 30, 30, 62))]:
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse(box, fill=colour)
        out.append(image)
    return out
