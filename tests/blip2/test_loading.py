"""Loading: by registry name, directory and hub id; device, dtype; failures that say what to do."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from blip2.errors import CheckpointUnavailable, InvalidArgument, InvalidCheckpoint, ModelNotFound
from blip2.loading import LoadOptions, load_model, resolve_device, resolve_dtype
from blip2.registry import Family, Registry


@pytest.mark.parametrize(
    ("name", "family", "model_class"),
    [
        ("tiny-opt", Family.OPT, "Blip2ForConditionalGeneration"),
        ("tiny-t5", Family.T5, "Blip2ForConditionalGeneration"),
        ("tiny-instruct", Family.INSTRUCT, "InstructBlipForConditionalGeneration"),
        ("tiny-itm", Family.ITM, "Blip2ForImageTextRetrieval"),
    ],
)
def test_each_family_loads_by_name(tiny_data_dir: Path, name: str, family: Family, model_class: str) -> None:
    lm = load_model(name, data_dir=tiny_data_dir)
    assert (lm.family, type(lm.model).__name__) == (family, model_class)
    assert (lm.device, lm.dtype) == (torch.device("cpu"), torch.float32)
    assert not lm.model.training
    described = lm.describe()
    assert described["memory_footprint_bytes"] == lm.memory_footprint_bytes > 100_000


def test_tiny_checkpoint_is_built_on_first_use(tmp_path: Path) -> None:
    lm = load_model("tiny-t5", data_dir=tmp_path)
    assert Path(lm.source) == tmp_path / "models" / "tiny-t5"
    assert (tmp_path / "models" / "tiny-t5" / "model.safetensors").is_file()


def test_a_directory_loads_with_its_family_read_from_config(tiny_data_dir: Path) -> None:
    lm = load_model(str(tiny_data_dir / "models" / "tiny-itm"), data_dir=tiny_data_dir)
    assert lm.family is Family.ITM


def test_a_user_registry_entry_names_a_local_checkpoint(tiny_data_dir: Path, tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(f'[models.my-model]\ncheckpoint = "{tiny_data_dir / "models" / "tiny-opt"}"\n')
    lm = load_model("my-model", data_dir=tiny_data_dir, registry=Registry.load(models_file))
    assert (lm.name, lm.family) == ("my-model", Family.OPT)


def test_a_missing_directory_is_model_not_found(tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text('[models.gone]\ncheckpoint = "/nowhere/blip2"\nfamily = "opt"\n')
    with pytest.raises(ModelNotFound, match="/nowhere/blip2"):
        load_model("gone", data_dir=tmp_path, registry=Registry.load(models_file))


def test_an_uncached_hub_model_fails_at_once_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # At once: no retry loop, which would back off between tries (transformers' five take about 30 s).
    caller, real_sleep, backed_off = threading.current_thread(), time.sleep, []

    def sleep(seconds: float) -> None:
        if threading.current_thread() is caller:
            backed_off.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(CheckpointUnavailable) as raised:
        load_model("blip2-opt-2.7b", data_dir=tmp_path)
    assert backed_off == [], "a retry loop backed off between tries"
    message = str(raised.value)
    assert "Salesforce/blip2-opt-2.7b" in message and "HF_HOME" in message and "local checkpoint" in message


def test_a_processor_that_disagrees_with_the_model_is_refused(tiny_data_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data_dir / "models" / "tiny-opt", broken)
    config_path = broken / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["num_query_tokens"] = 4  # the model has 8: transformers would mis-place image features silently
    config_path.write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpoint, match="inserts 4 image tokens but the model has 8"):
        load_model(str(broken), data_dir=tmp_path)


def test_devices_and_dtypes_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InvalidArgument, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(InvalidArgument, match="unknown device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgument, match="spreads a model over GPUs"):
            resolve_device("balanced")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_says_so(tiny_data_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="CUDA is not available"):
        load_model("tiny-opt", data_dir=tiny_data_dir, options=LoadOptions(device="cuda"))


def test_bf16_on_cpu_loads_in_that_dtype(tiny_data_dir: Path) -> None:
    lm = load_model("tiny-opt", data_dir=tiny_data_dir, options=LoadOptions(dtype="bf16"))
    assert lm.dtype == torch.bfloat16
    assert lm.model.language_model.get_input_embeddings().weight.dtype == torch.bfloat16
