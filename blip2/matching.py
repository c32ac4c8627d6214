"""Image-text matching: ITC similarity and ITM match probability, and ranking with both.

- ITC (contrastive): cosine similarity of the text's [CLS] embedding with each of the
  image's query embeddings, maximised over the queries (as BLIP-2 scores retrieval).
- ITM (matching head): the probability that text and image match, softmax(logits)[1], from
  queries that attend to the text and the image together. Slower but sharper.

Ranking follows BLIP-2's retrieval: ITC over all candidates, then ITM re-ranks the top k.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL.Image import Image

from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.features import image_projection, text_embeddings
from blip2.loading import LoadedModel
from blip2.qformer import EncodedTexts, image_queries, joint_queries, text_tokens
from blip2.registry import Family


@dataclass(frozen=True)
class MatchScore:
    index: int  # position of the candidate (text or image) in the input list
    itc: float  # cosine similarity in [-1, 1]
    itm: float  # match probability in [0, 1]


@dataclass(frozen=True)
class ScoreMatrix:
    itc: list[list[float]]  # [image][text]
    itm: list[list[float]]  # [image][text]


def rank_texts(lm: LoadedModel, image: Image, texts: Sequence[str], *, top_k: int | None = None) -> list[MatchScore]:
    """Texts for one image, best first: ITC for all, ITM re-ranks the ITC top k (all when None)."""
    _require_itm(lm)
    _require_items(texts, "texts")
    with torch.inference_mode():
        encoded_image = image_queries(lm, [image])
        encoded_texts = text_tokens(lm, list(texts))
        itc = _itc(lm, encoded_image.queries, encoded_texts)[0]
        candidates = _top(itc, top_k)
        vision = encoded_image.vision.expand(len(candidates), -1, -1)
        itm = _itm(lm, vision, _select(encoded_texts, candidates))
    return _sorted_scores(candidates, itc, itm)


def rank_images(lm: LoadedModel, text: str, images: Sequence[Image], *, top_k: int | None = None) -> list[MatchScore]:
    """Images for one text, best first: ITC for all, ITM re-ranks the ITC top k (all when None)."""
    _require_itm(lm)
    _require_items(images, "images")
    with torch.inference_mode():
        encoded_images = image_queries(lm, list(images))
        encoded_text = text_tokens(lm, [text])
        itc = _itc(lm, encoded_images.queries, encoded_text)[:, 0]
        candidates = _top(itc, top_k)
        texts = _select(encoded_text, [0] * len(candidates))
        itm = _itm(lm, encoded_images.vision[candidates], texts)
    return _sorted_scores(candidates, itc, itm)


def score_matrix(lm: LoadedModel, images: Sequence[Image], texts: Sequence[str]) -> ScoreMatrix:
    """ITC and ITM for every (image, text) pair."""
    _require_itm(lm)
    _require_items(images, "images")
    _require_items(texts, "texts")
    with torch.inference_mode():
        encoded_images = image_queries(lm, list(images))
        encoded_texts = text_tokens(lm, list(texts))
        itc = _itc(lm, encoded_images.queries, encoded_texts)
        pairs = [(i, t) for i in range(len(images)) for t in range(len(texts))]
        vision = encoded_images.vision[[i for i, _ in pairs]]
        itm = _itm(lm, vision, _select(encoded_texts, [t for _, t in pairs])).view(len(images), len(texts))
    return ScoreMatrix(itc=itc.tolist(), itm=itm.tolist())


def _itc(lm: LoadedModel, queries: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """(images, texts) cosine similarities, each the max over the image's queries."""
    image_embeds = image_projection(lm, queries)  # (I, Q, D)
    text_embeds = text_embeddings(lm, texts.tokens)  # (T, D)
    return torch.einsum("iqd,td->iqt", image_embeds, text_embeds).max(dim=1).values.float()


def _itm(lm: LoadedModel, vision: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """Match probability for each pair (vision[i], texts[i])."""
    queries = joint_queries(lm, vision, texts)
    head = lm.model.itm_head
    logits = head(queries.to(head.weight.dtype)).mean(dim=1)  # average the per-query logits, as BLIP-2
    return logits.float().softmax(dim=-1)[:, 1]


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


def _require_itm(lm: LoadedModel) -> None:
    if lm.family is not Family.ITM:
        raise UnsupportedOperation(
            f"matching needs a retrieval model (blip2-itm-vit-g, tiny-itm); {lm.name!r} is {lm.family.value}"
        )


def _require_items(items: Sequence[object], what: str) -> None:
    if not items:
        raise InvalidArgument(f"matching needs at least one of {what}")
