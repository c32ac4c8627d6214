"""Tiny checkpoints: the real Hugging Face format, deterministic, loadable by plain transformers."""

import hashlib
import json
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor, Blip2ForImageTextRetrieval

from blip2.errors import InvalidArgument
from blip2.tiny import TINY_NAMES, build_tiny_checkpoint, checkpoint_dir, ensure_tiny_checkpoint

FILES = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.mark.parametrize("name", TINY_NAMES)
def test_checkpoint_has_the_hub_layout(tiny_data_dir: Path, name: str) -> None:
    path = checkpoint_dir(tiny_data_dir, name)
    assert {p.name for p in path.iterdir()} >= FILES
    processor_config = json.loads((path / "processor_config.json").read_text())
    config = json.loads((path / "config.json").read_text())
    assert processor_config["num_query_tokens"] == config["num_query_tokens"]


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-t5", "tiny-instruct"])
def test_plain_transformers_loads_the_generating_checkpoints(tiny_data_dir: Path, name: str) -> None:
    path = checkpoint_dir(tiny_data_dir, name)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_token_id == model.config.image_token_index
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)


def test_plain_transformers_loads_the_retrieval_checkpoint(tiny_data_dir: Path) -> None:
    model = Blip2ForImageTextRetrieval.from_pretrained(checkpoint_dir(tiny_data_dir, "tiny-itm"))
    assert model.config.qformer_config.use_qformer_text_input


def test_every_linear_layer_is_at_least_64_wide(tiny_data_dir: Path) -> None:
    import torch

    model = AutoModelForImageTextToText.from_pretrained(checkpoint_dir(tiny_data_dir, "tiny-opt"))
    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert min(widths) >= 64


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-itm"])  # BPE, and WordPiece for the Q-Former
def test_builds_are_deterministic(tmp_path: Path, tiny_data_dir: Path, name: str) -> None:
    rebuilt = build_tiny_checkpoint(name, tmp_path / name)
    original = checkpoint_dir(tiny_data_dir, name)
    for name in ("model.safetensors", "tokenizer.json"):
        assert _sha(rebuilt / name) == _sha(original / name)


def test_ensure_builds_once_and_replaces_a_half_build(tmp_path: Path) -> None:
    half = checkpoint_dir(tmp_path, "tiny-opt")
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial")
    path = ensure_tiny_checkpoint("tiny-opt", tmp_path)
    assert (path / "config.json").is_file()
    stamp = (path / "config.json").stat().st_mtime_ns
    assert ensure_tiny_checkpoint("tiny-opt", tmp_path) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == ["tiny-opt"]  # no staging left behind


def test_unknown_tiny_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="tiny-opt"):
        build_tiny_checkpoint("tiny-gpt", tmp_path / "x")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
