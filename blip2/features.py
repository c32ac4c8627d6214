"""Embeddings, as LAVIS's `extract_features` offers them.

- `image`: the Q-Former's query outputs for the image (raw), projected and normalised per
  query (`query_embeddings`, what ITC compares), and their normalised mean as one vector.
- `text`: the Q-Former run as a text encoder; the [CLS] output projected and normalised.
- `multimodal`: query outputs with the text attending alongside, for an (image, text) pair.

Text and multimodal features need a retrieval checkpoint (blip2-itm-vit-g, tiny-itm), whose
Q-Former has text embeddings and projections; captioning checkpoints give image features
only (their raw queries, and `query_embeddings` projected into the language model's space).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from PIL.Image import Image

from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.loading import LoadedModel
from blip2.qformer import image_queries, joint_queries, text_tokens
from blip2.registry import Family


class FeatureMode(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    MULTIMODAL = "multimodal"


@dataclass(frozen=True)
class Features:
    embedding: list[float]  # one L2-normalised vector per input
    raw: list[list[float]]  # unprojected Q-Former outputs: per query (image, multimodal) or per token (text)
    query_embeddings: list[list[float]] | None  # projected per query (image mode), else None

    @property
    def dim(self) -> int:
        return len(self.embedding)


def extract_features(
    lm: LoadedModel,
    *,
    images: Sequence[Image] | None = None,
    texts: Sequence[str] | None = None,
    mode: str = FeatureMode.IMAGE,
) -> list[Features]:
    """One `Features` per image (image mode), per text (text mode) or per pair (multimodal)."""
    chosen = _mode(mode)
    images, texts = list(images or []), list(texts or [])
    if (refusal := lm.family.cannot_embed(chosen.value)) is not None:
        raise UnsupportedOperation(f"model {lm.name!r}: {refusal}")
    with torch.inference_mode():
        if chosen is FeatureMode.IMAGE:
            return _image_features(lm, _need(images, "images", chosen))
        if chosen is FeatureMode.TEXT:
            return _text_features(lm, _need(texts, "texts", chosen))
        return _multimodal_features(lm, _need(images, "images", chosen), _need(texts, "texts", chosen))


def _mode(mode: str) -> FeatureMode:
    try:
        return FeatureMode(mode)
    except ValueError as exc:
        raise InvalidArgument(f"unknown feature mode {mode!r}; use image, text or multimodal") from exc


def _need(items: list, what: str, mode: FeatureMode) -> list:  # type: ignore[type-arg]
    if not items:
        raise InvalidArgument(f"{mode.value} features need at least one of {what}")
    return items


def _image_features(lm: LoadedModel, images: list[Image]) -> list[Features]:
    queries = image_queries(lm, images).queries
    projected = image_projection(lm, queries)
    pooled = F.normalize(projected.mean(dim=1), dim=-1)
    return [_features(pooled[i], queries[i], projected[i]) for i in range(len(images))]


def image_projection(lm: LoadedModel, queries: torch.Tensor) -> torch.Tensor:
    """Per-query image embeddings: ITC space (normalised) for retrieval models, else the LLM's input space."""
    if lm.family is Family.ITM:
        return F.normalize(lm.model.vision_projection(queries.to(lm.model.vision_projection.weight.dtype)), dim=-1)
    return lm.model.language_projection(queries.to(lm.dtype))


def text_embeddings(lm: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The ITC text embedding: the [CLS] output projected and normalised."""
    return F.normalize(lm.model.text_projection(tokens[:, 0, :].to(lm.model.text_projection.weight.dtype)), dim=-1)


def _text_features(lm: LoadedModel, texts: list[str]) -> list[Features]:
    encoded = text_tokens(lm, texts)
    embeddings = text_embeddings(lm, encoded.tokens)
    lengths = encoded.attention_mask.sum(dim=1).tolist()
    return [_features(embeddings[i], encoded.tokens[i, : lengths[i]], None) for i in range(len(texts))]


def _multimodal_features(lm: LoadedModel, images: list[Image], texts: list[str]) -> list[Features]:
    if len(images) != len(texts):
        raise InvalidArgument(f"multimodal features pair images with texts: got {len(images)} and {len(texts)}")
    vision = image_queries(lm, images).vision
    joint = joint_queries(lm, vision, text_tokens(lm, texts))
    pooled = F.normalize(joint.mean(dim=1), dim=-1)
    return [_features(pooled[i], joint[i], None) for i in range(len(images))]


def _features(embedding: torch.Tensor, raw: torch.Tensor, projected: torch.Tensor | None) -> Features:
    return Features(
        embedding=embedding.float().tolist(),
        raw=raw.float().tolist(),
        query_embeddings=projected.float().tolist() if projected is not None else None,
    )
