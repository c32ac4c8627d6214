"""The model commands, run as a user runs them: the `blip2-jobs` executable in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

EXE = shutil.which("blip2-jobs", path=str(Path(sys.executable).parent)) or "blip2-jobs"


def run(args: list[str], data_dir: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BLIP2_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env_vars}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, image in photos.items():
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name])
    return paths


def test_caption_json(tiny_data_dir: Path, photo_files: dict[str, Path]) -> None:
    done = run(["caption", str(photo_files["chelsea"]), str(photo_files["coffee"]), "--max-new-tokens", "5",
                "--num-beams", "2", "--num-captions", "2", "--json"], tiny_data_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["model"]["name"] == "shapes-blip2"  # the default: trained by this project
    assert [len(r["captions"]) for r in document["results"]] == [2, 2]
    assert "loaded name=shapes-blip2" in done.stderr


def test_vqa_with_examples_and_quantization(tiny_data_dir: Path, photo_files: dict[str, Path]) -> None:
    done = run(["vqa", str(photo_files["chelsea"]), "--question", "what animal is it?", "--example", "sky colour?=blue",
                "--model", "tiny-t5", "--quantize", "int4", "--json"], tiny_data_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["model"]["quantization"].startswith("vision=int4")
    assert document["results"][0]["question"] == "what animal is it?"
    assert isinstance(document["results"][0]["answer"], str)


def test_instruct_embed_and_match_print_lines(tiny_data_dir: Path, photo_files: dict[str, Path]) -> None:
    image = str(photo_files["astronaut"])
    instructed = run(["instruct", image, "--instruction", "Describe it.", "--max-new-tokens", "4"], tiny_data_dir)
    assert instructed.returncode == 0 and instructed.stdout.startswith(image + ": ")
    embedded = run(["embed", "--text", "a cat", "--text", "a dog", "--mode", "text"], tiny_data_dir)
    assert embedded.returncode == 0 and embedded.stdout.count("dim=128") == 2  # shapes-itm, built on small-itm
    matched = run(["match", image, "--text", "an astronaut", "--text", "a cat", "--json"], tiny_data_dir)
    scores = json.loads(matched.stdout)["results"][0]["scores"]
    assert sorted(s["label"] for s in scores) == ["a cat", "an astronaut"]
    assert scores[0]["itm"] >= scores[1]["itm"]


def test_match_takes_the_default_match_model_the_api_takes(tiny_data_dir: Path, photo_files: dict[str, Path]) -> None:
    image = str(photo_files["astronaut"])
    done = run(["match", image, "--text", "a cat", "--json"], tiny_data_dir, BLIP2_DEFAULT_MATCH_MODEL="tiny-itm")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["name"] == "tiny-itm"


def test_one_text_many_images_ranks_images(tiny_data_dir: Path, photo_files: dict[str, Path]) -> None:
    paths = [str(p) for p in photo_files.values()]
    done = run(["match", *paths, "--text", "a cat", "--json"], tiny_data_dir)
    result = json.loads(done.stdout)["results"][0]
    assert result["text"] == "a cat" and sorted(s["label"] for s in result["scores"]) == sorted(paths)


def test_models_lists_what_is_present(tiny_data_dir: Path) -> None:
    done = run(["models", "--json"], tiny_data_dir)
    present = {m["name"]: m["present"] for m in json.loads(done.stdout)["models"]}
    assert present["tiny-opt"] and present["tiny-itm"] and not present["blip2-opt-2.7b"]
    assert present["shapes-blip2"] and present["shapes-itm"]  # shipped in blip2/pretrained/


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["caption", "/etc/hostname"], "error: invalid_image: /etc/hostname"),
        (["caption", "/no/such.jpg"], "error: invalid_image: no image file at /no/such.jpg"),
        (["caption", "{image}", "--model", "no-such-model"], "error: model_not_found: unknown model 'no-such-model'"),
        (["caption", "{image}", "--model", "blip2-opt-2.7b"], "error: checkpoint_unavailable: model 'blip2-opt-2.7b'"),
        (["caption", "{image}", "--max-new-tokens", "5000000"], "error: invalid_argument: max_new_tokens"),
        (["caption", "{image}", "--quantize", "int3"], "error: invalid_argument: unknown quantization 'int3'"),
        (["match", "{image}", "--text", "a cat", "--model", "tiny-opt"],
         "error: unsupported_operation: model 'tiny-opt': matching needs a retrieval model"),
        (["embed", "--text", "a cat", "--mode", "text", "--model", "shapes-blip2"],
         "error: unsupported_operation: model 'shapes-blip2': text embeddings need a retrieval model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_on_stderr_before_torch_is_imported(
    tiny_data_dir: Path, photo_files: dict[str, Path], args: list[str], expected: str, tmp_path: Path
) -> None:
    """What can be refused without the model is refused before torch is imported, in a fraction of
    a second instead of the seconds that importing torch and transformers takes: here a `torch` that
    cannot be imported stands first on the path, and none of these commands reaches it."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    args = [a.replace("{image}", str(photo_files["coffee"])) for a in args]
    python_path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = run(args, tiny_data_dir, PYTHONPATH=python_path)
    assert done.returncode == 2
    assert done.stdout == ""
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(expected), done.stderr
    assert "Traceback" not in done.stderr
