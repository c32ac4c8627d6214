"""Running the Q-Former by hand: the three passes that features and matching are built from.

transformers' `Blip2ForImageTextRetrieval.forward` recomputes the image for every text; these
passes let an image be encoded once and scored against many texts (and the other way round).

- `image_queries`: vision encoder -> Q-Former queries cross-attending to the image (`queries_of`,
  from vision outputs already computed).
- `text_tokens`: the Q-Former as a text encoder (no image), for the text [CLS] embedding.
- `joint_queries`: queries and text together, cross-attending to the image (ITM, multimodal).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL.Image import Image

from blip2 import fitting
from blip2.loading import LoadedModel

MAX_TEXT_TOKENS = 64  # LAVIS truncates Q-Former text at 32-35 tokens; a little more costs nothing


@dataclass(frozen=True)
class EncodedImages:
    vision: torch.Tensor  # (B, patches + 1, vision hidden): what the queries cross-attend to
    queries: torch.Tensor  # (B, num_query_tokens, Q-Former hidden)


@dataclass(frozen=True)
class EncodedTexts:
    input_ids: torch.Tensor  # (T, L)
    attention_mask: torch.Tensor  # (T, L)
    tokens: torch.Tensor  # (T, L, Q-Former hidden): the Q-Former run as a text encoder


def image_queries(lm: LoadedModel, images: Sequence[Image]) -> EncodedImages:
    processor = lm.processor.image_processor
    pixels = processor(fitting.fitted(processor, images), return_tensors="pt")["pixel_values"]
    vision = lm.model.vision_model(pixel_values=pixels.to(lm.device, lm.dtype), return_dict=True).last_hidden_state
    return EncodedImages(vision=vision, queries=queries_of(lm, vision))


def queries_of(lm: LoadedModel, vision: torch.Tensor) -> torch.Tensor:
    """The Q-Former's query outputs for vision encoder outputs: the queries cross-attend to the image."""
    model = lm.model
    return model.qformer(
        query_embeds=model.query_tokens.expand(vision.shape[0], -1, -1),
        encoder_hidden_states=vision,
        encoder_attention_mask=_ones(vision),
        return_dict=True,
    ).last_hidden_state


def text_tokens(lm: LoadedModel, texts: Sequence[str]) -> EncodedTexts:
    encoded = lm.tokenizer(
        list(texts), return_tensors="pt", padding=True, truncation=True, max_length=MAX_TEXT_TOKENS
    ).to(lm.device)
    model = lm.model
    tokens = model.qformer(
        query_embeds=model.embeddings(input_ids=encoded["input_ids"]),
        query_length=0,
        attention_mask=encoded["attention_mask"],
        return_dict=True,
    ).last_hidden_state
    return EncodedTexts(encoded["input_ids"], encoded["attention_mask"], tokens)


def joint_queries(lm: LoadedModel, vision: torch.Tensor, texts: EncodedTexts) -> torch.Tensor:
    """Query outputs for pairs (vision[i], texts[i]): queries and text attend to each other."""
    model = lm.model
    query_tokens = model.query_tokens.expand(vision.shape[0], -1, -1)
    num_queries = query_tokens.shape[1]
    embeds = model.embeddings(input_ids=texts.input_ids, query_embeds=query_tokens)
    query_mask = torch.ones(vision.shape[0], num_queries, dtype=texts.attention_mask.dtype, device=lm.device)
    hidden = model.qformer(
        query_embeds=embeds,
        query_length=num_queries,
        attention_mask=torch.cat([query_mask, texts.attention_mask], dim=1),
        encoder_hidden_states=vision,
        encoder_attention_mask=_ones(vision),
        return_dict=True,
    ).last_hidden_state
    return hidden[:, :num_queries, :]


def _ones(states: torch.Tensor) -> torch.Tensor:
    return torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)
