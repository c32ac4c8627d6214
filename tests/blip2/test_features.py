"""Features: image, text and multimodal embeddings, checked against transformers' own ITC."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.features import extract_features
from blip2.loading import LoadedModel
from tests.blip2.conftest import loaded


def _norm(values: list[float]) -> float:
    return float(torch.tensor(values).norm())


def test_image_features_have_raw_and_projected_queries(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    features = extract_features(itm, images=list(photos.values()), mode="image")
    config = itm.model.config
    assert len(features) == 3
    for f in features:
        assert f.dim == config.image_text_hidden_size
        assert _norm(f.embedding) == pytest.approx(1.0, abs=1e-5)
        assert (len(f.raw), len(f.raw[0])) == (config.num_query_tokens, config.qformer_config.hidden_size)
        assert f.query_embeddings is not None and len(f.query_embeddings) == config.num_query_tokens
        assert all(_norm(q) == pytest.approx(1.0, abs=1e-5) for q in f.query_embeddings)
    assert features[0].embedding != features[1].embedding


def test_text_features_are_the_projected_cls(itm: LoadedModel) -> None:
    texts = ["a cat lying on a couch", "a cup of coffee"]
    features = extract_features(itm, texts=texts, mode="text")
    assert [len(f.raw) for f in features] == [len(itm.tokenizer(t).input_ids) for t in texts]
    assert all(_norm(f.embedding) == pytest.approx(1.0, abs=1e-5) for f in features)
    assert features[0].query_embeddings is None


def test_image_and_text_features_reproduce_transformers_itc(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    image, text = photos["chelsea"], "a cat lying on a blanket"
    image_f = extract_features(itm, images=[image])[0]
    text_f = extract_features(itm, texts=[text], mode="text")[0]
    ours = max(float(torch.tensor(q) @ torch.tensor(text_f.embedding)) for q in image_f.query_embeddings or [])
    inputs = itm.processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        theirs = itm.model(**inputs, use_image_text_matching_head=False).logits_per_image.item()
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_multimodal_features_pair_images_with_texts(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    images = [photos["chelsea"], photos["chelsea"]]
    features = extract_features(itm, images=images, texts=["a cat", "a rocket"], mode="multimodal")
    assert len(features) == 2 and len(features[0].raw) == itm.model.config.num_query_tokens
    assert features[0].embedding != features[1].embedding  # the text changes the queries
    with pytest.raises(InvalidArgument, match="got 2 and 1"):
        extract_features(itm, images=images, texts=["a cat"], mode="multimodal")


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-t5"])
def test_captioning_models_give_image_features_only(
    tiny_data_dir: Path, photos: dict[str, Image.Image], name: str
) -> None:
    lm = loaded(name, tiny_data_dir)
    features = extract_features(lm, images=[photos["coffee"]])
    assert features[0].query_embeddings is not None
    assert len(features[0].query_embeddings[0]) == lm.model.config.text_config.hidden_size  # the LLM's input space
    with pytest.raises(UnsupportedOperation, match="retrieval model"):
        extract_features(lm, texts=["a cup"], mode="text")


def test_bad_modes_and_missing_inputs_are_refused(itm: LoadedModel) -> None:
    with pytest.raises(InvalidArgument, match="unknown feature mode"):
        extract_features(itm, texts=["x"], mode="audio")
    with pytest.raises(InvalidArgument, match="at least one of images"):
        extract_features(itm, texts=["x"], mode="image")


def test_quantized_retrieval_model_embeds(tiny_data_dir: Path, photos: dict[str, Image.Image]) -> None:
    exact = extract_features(loaded("tiny-itm", tiny_data_dir), images=[photos["astronaut"]])[0]
    int8 = extract_features(loaded("tiny-itm", tiny_data_dir, "int8"), images=[photos["astronaut"]])[0]
    cosine = float(torch.tensor(exact.embedding) @ torch.tensor(int8.embedding))
    assert 0.9 < cosine < 1.0 + 1e-6  # close to full precision, not identical to it
