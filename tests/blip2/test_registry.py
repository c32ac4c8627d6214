"""The registry: built-in names, user entries from TOML, local directories and hub ids."""

from pathlib import Path

import pytest

from blip2.errors import InvalidArgument, ModelNotFound
from blip2.registry import BUILTIN, FAMILY_TEMPLATES, Family, Registry, family_of_checkpoint_dir, family_of_config

EXPECTED = {
    "blip2-opt-2.7b": Family.OPT,
    "blip2-opt-6.7b": Family.OPT,
    "blip2-opt-2.7b-coco": Family.OPT,
    "blip2-flan-t5-xl": Family.T5,
    "blip2-flan-t5-xxl": Family.T5,
    "blip2-itm-vit-g": Family.ITM,
    "instructblip-flan-t5-xl": Family.INSTRUCT,
    "instructblip-vicuna-7b": Family.INSTRUCT,
    "tiny-opt": Family.OPT,
    "tiny-t5": Family.T5,
    "tiny-instruct": Family.INSTRUCT,
    "tiny-itm": Family.ITM,
    "small-opt": Family.OPT,
    "small-itm": Family.ITM,
    "shapes-blip2": Family.OPT,
    "shapes-itm": Family.ITM,
}


def test_every_family_users_run_is_registered() -> None:
    registry = Registry.load()
    assert {spec.name: spec.family for spec in registry.specs()} == EXPECTED
    assert registry.resolve("blip2-opt-2.7b").checkpoint == "Salesforce/blip2-opt-2.7b"
    assert registry.resolve("tiny-itm").tiny and registry.resolve("small-opt").tiny


def test_family_templates_follow_blip2() -> None:
    assert FAMILY_TEMPLATES[Family.OPT].vqa == "Question: {} Answer:"
    assert FAMILY_TEMPLATES[Family.T5].vqa == "Question: {} Short answer:"
    spec = Registry.load().resolve("blip2-opt-2.7b")
    assert (spec.caption_defaults.num_beams, spec.caption_defaults.max_new_tokens) == (5, 30)


def test_unknown_name_is_refused_with_the_choices() -> None:
    with pytest.raises(ModelNotFound, match="tiny-opt"):
        Registry.load().resolve("no-such-model")
    assert not Registry.load().is_known("no-such-model")


def test_hub_ids_and_checkpoint_directories_resolve(tiny_data_dir: Path) -> None:
    registry = Registry.load()
    hub = registry.resolve("someone/blip2-finetuned")
    assert (hub.checkpoint, hub.family) == ("someone/blip2-finetuned", None)
    local = registry.resolve(str(tiny_data_dir / "models" / "tiny-t5"))
    assert Path(local.checkpoint).is_dir()
    assert family_of_checkpoint_dir(Path(local.checkpoint)) is Family.T5
    assert not registry.is_known(str(tiny_data_dir / "missing" / "dir"))


def test_user_file_adds_and_overrides_entries(tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        """
[models.product-captioner]
checkpoint = "/srv/models/captioner"
family = "opt"
description = "fine-tuned on our catalogue"
vqa_template = "Q: {} A:"

[models."blip2-opt-2.7b"]  # quoted: a bare dot would nest tables
checkpoint = "/mirror/blip2-opt-2.7b"
family = "opt"
"""
    )
    registry = Registry.load(models_file)
    mine = registry.resolve("product-captioner")
    assert mine.family is Family.OPT and mine.description == "fine-tuned on our catalogue"
    assert mine.templates_for(Family.OPT).vqa == "Q: {} A:"
    assert registry.resolve("blip2-opt-2.7b").checkpoint == "/mirror/blip2-opt-2.7b"
    assert len(registry.specs()) == len(BUILTIN) + 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[models.x]\nfamily = 'opt'\n", "needs a 'checkpoint'"),
        ("[models.x]\ncheckpoint = 'a/b'\nfamily = 'gpt'\n", "family 'gpt'"),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_bad_user_file_says_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        Registry.load(models_file)


def test_family_is_read_from_config() -> None:
    assert family_of_config({"model_type": "instructblip"}) is Family.INSTRUCT
    assert family_of_config({"model_type": "blip-2", "architectures": ["Blip2ForImageTextRetrieval"]}) is Family.ITM
    assert family_of_config({"model_type": "blip-2", "text_config": {"is_encoder_decoder": True}}) is Family.T5
    assert family_of_config({"model_type": "blip-2", "text_config": {"model_type": "opt"}}) is Family.OPT
    with pytest.raises(InvalidArgument, match="not a BLIP-2"):
        family_of_config({"model_type": "llava"})
