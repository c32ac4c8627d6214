"""Matching: ITC and ITM scores equal transformers' own, and ranking uses both as BLIP-2 does."""

import pytest
import torch
from PIL import Image

from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.loading import LoadedModel
from blip2.matching import (
    ImageRanking,
    TextRanking,
    rank_images,
    rank_images_many,
    rank_texts,
    rank_texts_many,
    score_matrix,
)

TEXTS = ["a cat lying on a blanket", "an astronaut with a flag", "a cup of coffee", "a red circle", "two dogs"]


def _transformers_scores(itm: LoadedModel, image: Image.Image, texts: list[str]) -> tuple[list[float], list[float]]:
    inputs = itm.processor(images=[image] * len(texts), text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        itm_logits = itm.model(**inputs, use_image_text_matching_head=True).logits_per_image
        itc = itm.model(**inputs, use_image_text_matching_head=False).logits_per_image
    return itc.diagonal().tolist(), itm_logits.softmax(dim=-1)[:, 1].tolist()


def test_scores_equal_transformers_forward(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    scores = rank_texts(itm, photos["chelsea"], TEXTS)
    itc, itm_probability = _transformers_scores(itm, photos["chelsea"], TEXTS)
    for s in scores:
        assert s.itc == pytest.approx(itc[s.index], abs=1e-5)
        assert s.itm == pytest.approx(itm_probability[s.index], abs=1e-5)


def test_texts_are_ranked_by_itm(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    scores = rank_texts(itm, photos["astronaut"], TEXTS)
    assert sorted(s.index for s in scores) == list(range(len(TEXTS)))
    assert [s.itm for s in scores] == sorted((s.itm for s in scores), reverse=True)
    assert all(0.0 <= s.itm <= 1.0 and -1.0 <= s.itc <= 1.0 for s in scores)


def test_top_k_reranks_only_the_itc_best(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    everything = rank_texts(itm, photos["coffee"], TEXTS)
    itc_best = {s.index for s in sorted(everything, key=lambda s: -s.itc)[:2]}
    top = rank_texts(itm, photos["coffee"], TEXTS, top_k=2)
    assert {s.index for s in top} == itc_best
    with pytest.raises(InvalidArgument, match="top_k"):
        rank_texts(itm, photos["coffee"], TEXTS, top_k=0)


def test_images_are_ranked_for_a_text(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    images = list(photos.values())
    scores = rank_images(itm, TEXTS[0], images)
    for s in scores:  # the same pair scores the same from either side
        alone = {t.index: t for t in rank_texts(itm, images[s.index], TEXTS)}[0]
        assert (s.itc, s.itm) == pytest.approx((alone.itc, alone.itm), abs=1e-5)


def test_score_matrix_covers_every_pair(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    images = list(photos.values())
    matrix = score_matrix(itm, images, TEXTS[:3])
    assert (len(matrix.itc), len(matrix.itc[0]), len(matrix.itm), len(matrix.itm[0])) == (3, 3, 3, 3)
    row = {s.index: s for s in rank_texts(itm, images[1], TEXTS[:3])}
    assert matrix.itm[1] == pytest.approx([row[i].itm for i in range(3)], abs=1e-5)


def test_matching_needs_a_retrieval_model(opt: LoadedModel, itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    with pytest.raises(UnsupportedOperation, match="retrieval model"):
        rank_texts(opt, photos["coffee"], TEXTS)
    with pytest.raises(InvalidArgument, match="at least one of texts"):
        rank_texts(itm, photos["coffee"], [])


def test_several_requests_in_one_pass_score_as_each_alone(itm: LoadedModel, photos: dict[str, Image.Image]) -> None:
    """What a batch of match jobs gets: two requests about the same image share its encoding, and every
    request's ranking equals the one it gets alone (ITC exactly, ITM to float precision)."""
    cat, coffee = photos["chelsea"], photos["coffee"]
    text_requests = [TextRanking(cat, TEXTS, top_k=3), TextRanking(cat, TEXTS[1:]), TextRanking(coffee, TEXTS[:2])]
    together = rank_texts_many(itm, text_requests)
    alone = [rank_texts(itm, r.image, r.texts, top_k=r.top_k) for r in text_requests]
    image_requests = [ImageRanking("a cat", [cat, coffee]), ImageRanking("a cup of coffee", [coffee, cat, cat])]
    together += rank_images_many(itm, image_requests)
    alone += [rank_images(itm, r.text, r.images, top_k=r.top_k) for r in image_requests]
    for mine, reference in zip(together, alone, strict=True):
        assert [s.index for s in mine] == [s.index for s in reference]
        assert [s.itc for s in mine] == pytest.approx([s.itc for s in reference], abs=1e-5)
        assert [s.itm for s in mine] == pytest.approx([s.itm for s in reference], abs=1e-5)
    assert [len(scores) for scores in together] == [3, 4, 2, 2, 3]
