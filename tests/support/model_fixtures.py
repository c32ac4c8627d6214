"""Fixtures for the model library's tests: tiny checkpoints, real photographs, `gpu` tests skipped without CUDA.

Imported by tests/conftest.py. It needs only what `blip2` needs (no Postgres, Redis or Celery), so
the GPU tests run on a machine that has nothing else:

    pytest --noconftest -p tests.support.model_fixtures -m gpu tests/blip2/test_gpu.py
"""

import os

# Tests run as if the hub did not exist: nothing may reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where there is no CUDA device (run them through the device tool)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory holding all four tiny checkpoints, built once per session."""
    from blip2.tiny import TINY_NAMES, ensure_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp("data")
    for name in TINY_NAMES:
        ensure_tiny_checkpoint(name, data_dir)
    yield data_dir


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs shipped with scikit-image: astronaut, chelsea (a cat), coffee."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")}
