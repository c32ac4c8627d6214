"""Image-text matching: ITC similarity and ITM match probability, and ranking with both.

- ITC (contrastive): cosine similarity of the text's [CLS] embedding with each of the
  image's query embeddings, maximised over the queries (as BLIP-2 scores retrieval).
- ITM (matching head): the probability that text and image match, softmax(logits)[1], from
  queries that attend to the text and the image together. Slower but sharper.

Ranking follows BLIP-2's retrieval: ITC over all candidates, then ITM re-ranks the top k.

`rank_texts_many` / `rank_images_many` rank several requests in one pass each: every distinct image
and text among them is encoded once, and every ITM pair of every request goes through one Q-Former
pass, so requests about the same image (or the same texts) share its encoding.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from PIL.Image import Image

from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.features import image_projection, text_embeddings
from blip2.loading import LoadedModel
from blip2.qformer import EncodedTexts, image_queries, joint_queries, text_tokens

T = TypeVar("T")


@dataclass(frozen=True)
class MatchScore:
    index: int  # position of the candidate (text or image) in the input list
    itc: float  # cosine similarity in [-1, 1]
    itm: float  # match probability in [0, 1]


@dataclass(frozen=True)
class ScoreMatrix:
    itc: list[list[float]]  # [image][text]
    itm: list[list[float]]  # [image][text]


@dataclass(frozen=True)
class TextRanking:
    """One request of `rank_texts_many`: rank `texts` against `image`."""

    image: Image
    texts: Sequence[str]
    top_k: int | None = None


@dataclass(frozen=True)
class ImageRanking:
    """One request of `rank_images_many`: rank `images` against `text`."""

    text: str
    images: Sequence[Image]
    top_k: int | None = None


def rank_texts(lm: LoadedModel, image: Image, texts: Sequence[str], *, top_k: int | None = None) -> list[MatchScore]:
    """Texts for one image, best first: ITC for all, ITM re-ranks the ITC top k (all when None)."""
    return rank_texts_many(lm, [TextRanking(image, texts, top_k)])[0]


def rank_images(lm: LoadedModel, text: str, images: Sequence[Image], *, top_k: int | None = None) -> list[MatchScore]:
    """Images for one text, best first: ITC for all, ITM re-ranks the ITC top k (all when None)."""
    return rank_images_many(lm, [ImageRanking(text, images, top_k)])[0]


def rank_texts_many(lm: LoadedModel, requests: Sequence[TextRanking]) -> list[list[MatchScore]]:
    """`rank_texts` for each request, sharing one encoding of each distinct image and text among them."""
    for request in requests:
        _require_items(request.texts, "texts")
    return _rank_many(lm, [([r.image], r.texts, r.top_k) for r in requests])


def rank_images_many(lm: LoadedModel, requests: Sequence[ImageRanking]) -> list[list[MatchScore]]:
    """`rank_images` for each request, sharing one encoding of each distinct image and text among them."""
    for request in requests:
        _require_items(request.images, "images")
    return _rank_many(lm, [(r.images, [r.text], r.top_k) for r in requests])


def _rank_many(
    lm: LoadedModel, requests: Sequence[tuple[Sequence[Image], Sequence[str], int | None]]
) -> list[list[MatchScore]]:
    """Rank each request's candidates (its images x its texts, one side a single item), best first:
    ITC over every distinct image and text at once, then one ITM pass over every request's top k."""
    _require_itm(lm)
    images = _distinct(image for request_images, _, _ in requests for image in request_images)
    texts = _distinct(text for _, request_texts, _ in requests for text in request_texts)
    with torch.inference_mode():
        encoded_images = image_queries(lm, images.items)
        encoded_texts = text_tokens(lm, texts.items)
        itc = itc_similarity(lm, encoded_images.queries, encoded_texts)  # (distinct images, distinct texts)
        pairs = [[(images.index(i), texts.index(t)) for i in imgs for t in txts] for imgs, txts, _ in requests]
        request_itc = [itc[[i for i, _ in p], [t for _, t in p]] for p in pairs]
        candidates = [_top(scores, top_k) for scores, (_, _, top_k) in zip(request_itc, requests, strict=True)]
        chosen = [p[c] for p, cs in zip(pairs, candidates, strict=True) for c in cs]
        itm = _itm(lm, encoded_images.vision[[i for i, _ in chosen]], _select(encoded_texts, [t for _, t in chosen]))
    return _split_scores(candidates, request_itc, itm)


def score_matrix(lm: LoadedModel, images: Sequence[Image], texts: Sequence[str]) -> ScoreMatrix:
    """ITC and ITM for every (image, text) pair."""
    _require_itm(lm)
    _require_items(images, "images")
    _require_items(texts, "texts")
    with torch.inference_mode():
        encoded_images = image_queries(lm, list(images))
        encoded_texts = text_tokens(lm, list(texts))
        itc = itc_similarity(lm, encoded_images.queries, encoded_texts)
        pairs = [(i, t) for i in range(len(images)) for t in range(len(texts))]
        vision = encoded_images.vision[[i for i, _ in pairs]]
        itm = _itm(lm, vision, _select(encoded_texts, [t for _, t in pairs])).view(len(images), len(texts))
    return ScoreMatrix(itc=itc.tolist(), itm=itm.tolist())


def itc_similarity(lm: LoadedModel, queries: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """(images, texts) cosine similarities, each the max over the image's query embeddings: the ITC
    score retrieval ranks by, and what training's contrastive loss sharpens."""
    image_embeds = image_projection(lm, queries)  # (I, Q, D), normalised
    text_embeds = text_embeddings(lm, texts.tokens)  # (T, D), normalised
    return torch.einsum("iqd,td->iqt", image_embeds, text_embeds).max(dim=1).values.float()


def itm_logits(lm: LoadedModel, vision: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """(pairs, 2) match logits for each pair (vision[i], texts[i]): the ITM head on the queries that
    attended to both, averaged over the queries as BLIP-2 does. Class 1 is "they match"."""
    queries = joint_queries(lm, vision, texts)
    head = lm.model.itm_head
    return head(queries.to(head.weight.dtype)).mean(dim=1).float()


def _itm(lm: LoadedModel, vision: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """Match probability for each pair (vision[i], texts[i])."""
    return itm_logits(lm, vision, texts).softmax(dim=-1)[:, 1]


def _top(itc: torch.Tensor, top_k: int | None) -> list[int]:
    if top_k is not None and top_k < 1:
        raise InvalidArgument("top_k must be at least 1")
    k = len(itc) if top_k is None else min(top_k, len(itc))
    return itc.topk(k).indices.tolist()


def _select(texts: EncodedTexts, rows: list[int]) -> EncodedTexts:
    return EncodedTexts(texts.input_ids[rows], texts.attention_mask[rows], texts.tokens[rows])


def _sorted_scores(candidates: list[int], itc: torch.Tensor, itm: torch.Tensor) -> list[MatchScore]:
    scores = [MatchScore(index=c, itc=float(itc[c]), itm=float(itm[n])) for n, c in enumerate(candidates)]
    return sorted(scores, key=lambda s: (-s.itm, -s.itc))


def _split_scores(candidates: list[list[int]], itc: list[torch.Tensor], itm: torch.Tensor) -> list[list[MatchScore]]:
    """Each request's scores, from the ITM probabilities of all requests' pairs in order."""
    ranked, start = [], 0
    for chosen, scores in zip(candidates, itc, strict=True):
        ranked.append(_sorted_scores(chosen, scores, itm[start : start + len(chosen)]))
        start += len(chosen)
    return ranked


@dataclass
class _Distinct(Generic[T]):
    """The distinct items of a list in first-seen order, and where each is (by identity for images,
    by value for texts: a decoded image shared by two requests is one object)."""

    items: list[T]
    positions: dict[object, int]

    def index(self, item: T) -> int:
        return self.positions[_identity(item)]


def _distinct(values: Iterable[T]) -> _Distinct[T]:
    items: list[T] = []
    positions: dict[object, int] = {}
    for value in values:
        key = _identity(value)
        if key not in positions:
            positions[key] = len(items)
            items.append(value)
    return _Distinct(items, positions)


def _identity(value: object) -> object:
    return value if isinstance(value, str) else id(value)


def _require_itm(lm: LoadedModel) -> None:
    if (refusal := lm.family.cannot_match()) is not None:
        raise UnsupportedOperation(f"model {lm.name!r}: {refusal}")


def _require_items(items: Sequence[object], what: str) -> None:
    if not items:
        raise InvalidArgument(f"matching needs at least one of {what}")
