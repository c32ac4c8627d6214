"""Tiny and small checkpoints: the real Hugging Face format, deterministic, loadable by plain transformers."""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Blip2ForImageTextRetrieval

from blip2.data.shapes import all_scenes, caption, questions
from blip2.errors import InvalidArgument
from blip2.tiny import SMALL, SMALL_NAMES, TINY_NAMES, build_tiny_checkpoint, checkpoint_dir, ensure_tiny_checkpoint

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


@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("small")
    for name in SMALL_NAMES:
        ensure_tiny_checkpoint(name, data_dir)
    return data_dir


def test_small_checkpoints_load_in_plain_transformers_at_their_size(small_data_dir: Path) -> None:
    captioner = AutoModelForImageTextToText.from_pretrained(checkpoint_dir(small_data_dir, "small-opt"))
    matcher = Blip2ForImageTextRetrieval.from_pretrained(checkpoint_dir(small_data_dir, "small-itm"))
    for model in (captioner, matcher):
        vision = model.config.vision_config
        assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (
            SMALL.width,
            SMALL.vision_layers,
            SMALL.patch_size,
        )
        assert model.config.num_query_tokens == SMALL.query_tokens
        assert min(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)) >= 64
    processor = AutoProcessor.from_pretrained(checkpoint_dir(small_data_dir, "small-opt"))
    assert processor.num_query_tokens == captioner.config.num_query_tokens


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_small_tokenizers_write_every_word_of_the_shapes_grammar_as_one_token(small_data_dir: Path, name: str) -> None:
    """A model that writes " yes" in two pieces can stop after the first: "ye"."""
    tokenizer = AutoProcessor.from_pretrained(checkpoint_dir(small_data_dir, name)).tokenizer
    scenes = all_scenes()[::50]
    for text in [caption(scene) for scene in scenes]:
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(text.split()), text
    answers = {a for scene in scenes for _, a in questions(scene, random.Random(0))}
    for answer in answers:  # written after the prompt, as a new word
        assert len(tokenizer(f" {answer}", add_special_tokens=False)["input_ids"]) == 1, answer


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_small_vision_position_embeddings_say_where_a_patch_is(small_data_dir: Path, name: str) -> None:
    """The Q-Former sees patches as a set: each patch's place must be in its features, as large as its pixels'."""
    model = Blip2ForImageTextRetrieval if name == "small-itm" else AutoModelForImageTextToText
    vision = model.from_pretrained(checkpoint_dir(small_data_dir, name)).vision_model
    table = vision.embeddings.position_embedding[0, 1:].detach()  # row-major 8 x 8 patches
    patches = vision.embeddings.patch_embedding(torch.rand(16, 3, 64, 64) * 4 - 2).flatten(2).transpose(1, 2)
    assert table.norm(dim=1).mean() > 0.5 * patches.norm(dim=2).mean()
    similarity = torch.nn.functional.cosine_similarity(table[:, None], table[None], dim=2)
    corner, neighbour, far = 0, 1, 63
    assert similarity[corner, neighbour] > similarity[corner, far] + 0.2
    assert len({tuple(row.round(decimals=4).tolist()) for row in table}) == 64  # every place its own


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_building_checkpoints_logs_no_advice_to_install_torchvision(tmp_path: Path) -> None:
    """torchvision breaks the import of transformers' BLIP-2 processor with this torch; transformers
    advises installing it when its torchvision image processor is asked for by name."""
    build = (
        f"from pathlib import Path; import blip2.tiny as t; t.ensure_tiny_checkpoint('tiny-opt', Path(r'{tmp_path}'))"
    )
    env = os.environ | {"TRANSFORMERS_VERBOSITY": "warning"}  # as a user's (the tests quiet transformers)
    done = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchvision" not in done.stderr + done.stdout
    saved = json.loads((checkpoint_dir(tmp_path, "tiny-opt") / "processor_config.json").read_text())
    assert saved["image_processor"]["image_processor_type"] == "BlipImageProcessor", (
        "as on the hub, whatever the backend"
    )
