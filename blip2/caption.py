"""Captioning: one or more captions per image, unconditional or continuing a prompt.

results = caption(model, [image], style="detailed", decoding={"num_beams": 3})
results[0].captions  # ["a cat lying on a couch ..."]
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from PIL.Image import Image

from blip2.decoding import Decoding, resolve
from blip2.errors import InvalidArgument
from blip2.generation import generate_texts, require_same_length
from blip2.loading import LoadedModel


class CaptionStyle(StrEnum):
    SHORT = "short"  # the family's captioning prompt (unconditional for BLIP-2)
    DETAILED = "detailed"  # a prompt asking for a detailed description


@dataclass(frozen=True)
class CaptionResult:
    captions: list[str]  # `num_captions` of them, best first for beam search
    prompt: str  # what the model continued ("" for unconditional captioning)


def caption(
    lm: LoadedModel,
    images: Sequence[Image],
    *,
    prompts: Sequence[str | None] | None = None,
    style: str = CaptionStyle.SHORT,
    decoding: Decoding = None,
) -> list[CaptionResult]:
    """Caption each image; `prompts[i]` (when given and not None) replaces the style's prompt for image i.

    `decoding`: full options, or the ones to change from the model's captioning defaults.
    """
    prompts = list(prompts) if prompts is not None else [None] * len(images)
    require_same_length(images, prompts, "prompts")
    default_prompt = style_prompt(lm, style)
    full_prompts = [p if p is not None else default_prompt for p in prompts]
    texts = generate_texts(lm, images, full_prompts, resolve(lm.spec.caption_defaults, decoding))
    return [CaptionResult(captions=t, prompt=p) for t, p in zip(texts, full_prompts, strict=True)]


def style_prompt(lm: LoadedModel, style: str) -> str:
    try:
        chosen = CaptionStyle(style)
    except ValueError as exc:
        raise InvalidArgument(f"unknown caption style {style!r}; use short or detailed, or give a prompt") from exc
    templates = lm.templates
    return templates.short_caption if chosen is CaptionStyle.SHORT else templates.detailed_caption
