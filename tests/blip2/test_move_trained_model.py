"""Moving a saved model under its public name (`move_trained_model`), as a training job does once the
name is registered as its own, and saving one straight under its name (`save_trained_model`)."""

from pathlib import Path

from blip2.loading import LoadedModel
from blip2.training import move_trained_model, save_trained_model


def model_dir(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_the_model_replaces_what_is_under_its_name_and_nothing_beside_it(tmp_path: Path) -> None:
    """What was under the name goes; `NAME.old`, a name a model may have, is another model and stays."""
    saved = model_dir(tmp_path / ".mine.job-1", b"new")
    model_dir(tmp_path / "mine", b"left behind")
    neighbour = model_dir(tmp_path / "mine.old", b"another model")
    move_trained_model(saved, tmp_path / "mine")
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == b"new"
    assert (neighbour / "model.safetensors").read_bytes() == b"another model", "a model beside it was touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mine.old"], "something was left behind"


def test_a_name_with_nothing_under_it_gets_the_model(tmp_path: Path) -> None:
    move_trained_model(model_dir(tmp_path / ".mine.job-1", b"new"), tmp_path / "mine")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == b"new"


def test_saving_over_a_model_replaces_it_and_nothing_beside_it(tmp_path: Path, opt: LoadedModel) -> None:
    """The library's own save, for a caller that saves straight under the name: it too leaves
    `NAME.old`, another model's name, alone."""
    model_dir(tmp_path / "mine", b"left behind")
    neighbour = model_dir(tmp_path / "mine.old", b"another model")
    save_trained_model(opt, tmp_path / "mine", losses=[2.0, 1.0], metrics={"val_loss": 1.0})
    assert (tmp_path / "mine" / "config.json").is_file() and (tmp_path / "mine" / "loss_curve.png").is_file()
    assert (neighbour / "model.safetensors").read_bytes() == b"another model", "a model beside it was touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mine.old"], "something was left behind"
