"""Captioning on every generating family, quantized too, on photographs and generated images."""

from pathlib import Path

import pytest
from PIL import Image

from blip2.caption import caption
from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.generation import clean_text
from blip2.loading import LoadedModel
from tests.blip2.conftest import loaded

GREEDY = DecodingOptions(max_new_tokens=6, min_new_tokens=3, num_beams=1)
BEAMS = DecodingOptions(max_new_tokens=6, min_new_tokens=3, num_beams=3)
GENERATING = ["tiny-opt", "tiny-t5", "tiny-instruct"]


@pytest.mark.parametrize("name", GENERATING)
@pytest.mark.parametrize("quantize", ["none", "int8", "int4"])
def test_every_family_captions_photos(
    tiny_data_dir: Path, photos: dict[str, Image.Image], name: str, quantize: str
) -> None:
    lm = loaded(name, tiny_data_dir, quantize)
    results = caption(lm, list(photos.values()), decoding=GREEDY)
    assert len(results) == 3
    for result in results:
        assert len(result.captions) == 1 and result.captions[0].strip()
        assert result.prompt == lm.templates.short_caption


@pytest.mark.parametrize("name", GENERATING)
@pytest.mark.parametrize("decoding", [GREEDY, BEAMS], ids=["greedy", "beams"])
def test_batched_equals_alone(
    tiny_data_dir: Path, photos: dict[str, Image.Image], shapes: list[Image.Image], name: str, decoding: DecodingOptions
) -> None:
    lm = loaded(name, tiny_data_dir)
    images = [*photos.values(), *shapes]
    prompts = [None, "a photo of", "this is a picture of a red circle on the left", None, "a", None]
    batched = caption(lm, images, prompts=prompts, decoding=decoding)
    alone = [caption(lm, [i], prompts=[p], decoding=decoding)[0] for i, p in zip(images, prompts, strict=True)]
    assert [r.captions for r in batched] == [r.captions for r in alone]
    assert len({r.captions[0] for r in batched}) > 1  # the outputs depend on the input


def test_prompts_differ_per_image_and_styles_pick_templates(opt: LoadedModel, shapes: list[Image.Image]) -> None:
    results = caption(opt, shapes[:2], prompts=["a photo of", None], style="detailed", decoding=GREEDY)
    assert results[0].prompt == "a photo of"
    assert results[1].prompt == opt.templates.detailed_caption != opt.templates.short_caption
    with pytest.raises(InvalidArgument, match="unknown caption style"):
        caption(opt, shapes[:1], style="poetic")


def test_several_captions_per_image(opt: LoadedModel, shapes: list[Image.Image]) -> None:
    beams = caption(opt, shapes[:2], decoding=DecodingOptions(max_new_tokens=5, num_beams=4, num_captions=3))
    assert [len(r.captions) for r in beams] == [3, 3]
    assert len(set(beams[0].captions)) == 3  # beam search returns distinct beams


def test_nucleus_sampling_is_reproducible_with_a_seed(opt: LoadedModel, photos: dict[str, Image.Image]) -> None:
    image = [photos["chelsea"]]

    def sample(seed: int) -> list[str]:
        options = DecodingOptions(
            max_new_tokens=8, min_new_tokens=4, use_nucleus_sampling=True, top_p=0.95, num_captions=3, seed=seed
        )
        return caption(opt, image, decoding=options)[0].captions

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_decoding_limits_are_respected(opt: LoadedModel, shapes: list[Image.Image]) -> None:
    short = caption(opt, shapes[:1], decoding=DecodingOptions(max_new_tokens=2, min_new_tokens=2, num_beams=1))
    tokens = opt.tokenizer(short[0].captions[0], add_special_tokens=False).input_ids
    assert 1 <= len(tokens) <= 2


def test_mismatched_prompts_and_retrieval_models_are_refused(
    opt: LoadedModel, itm: LoadedModel, shapes: list[Image.Image]
) -> None:
    with pytest.raises(InvalidArgument, match="3 images but 2 prompts"):
        caption(opt, shapes, prompts=["a", "b"])
    with pytest.raises(UnsupportedOperation, match="retrieval model"):
        caption(itm, shapes)
    assert caption(opt, [], decoding=GREEDY) == []


def test_generated_text_is_cleaned_of_control_characters() -> None:
    assert clean_text(" a\x00 red\x07 circle\x1b \n") == "a red circle"
    assert clean_text("two\tlines\nof text") == "two\tlines\nof text"  # tabs and newlines are text
    assert clean_text("\x00\x00") == ""
