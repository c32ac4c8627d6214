"""Text generation shared by caption, vqa and instruct: prompts + images in, texts out.

The one subtle part is padding. A decoder-only language model (OPT, Vicuna) continues the
last position of every row, so a batch of prompts of different lengths must be padded on the
left; an encoder-decoder model (Flan-T5) reads its prompt with an attention mask and is padded
on the right. With the right side, a prompt answered in a batch gets the same greedy answer
as alone.
"""

import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL.Image import Image

from blip2 import fitting
from blip2.decoding import DecodingOptions
from blip2.errors import InvalidArgument, UnsupportedOperation
from blip2.loading import LoadedModel

__all__ = ["DecodingOptions", "generate_texts", "require_same_length"]


def generate_texts(
    lm: LoadedModel,
    images: Sequence[Image],
    prompts: Sequence[str],
    decoding: DecodingOptions,
) -> list[list[str]]:
    """For each (image, prompt), `decoding.num_captions` generated continuations of the prompt."""
    if (refusal := lm.family.cannot_generate()) is not None:
        raise UnsupportedOperation(f"model {lm.name!r}: {refusal}")
    require_same_length(images, prompts, "prompts")
    if not images:
        return []
    inputs = _encode(lm, images, prompts)
    _check_positions(lm, inputs["input_ids"].shape[1], decoding)
    with torch.inference_mode(), _seeded(decoding.seed), _quiet():
        output_ids = lm.model.generate(**inputs, **_generate_kwargs(decoding))
    if _decoder_only(lm):
        output_ids = output_ids[:, inputs["input_ids"].shape[1] :]  # decoder-only output repeats the prompt
    texts = lm.tokenizer.batch_decode(output_ids, skip_special_tokens=True)
    n = decoding.num_captions
    return [[clean_text(t) for t in texts[i * n : (i + 1) * n]] for i in range(len(images))]


def clean_text(text: str) -> str:
    """Generated text without the characters no client wants: NUL and the other control characters
    (a random or half-trained model emits them, and Postgres refuses NUL in JSON). Tabs and newlines stay."""
    kept = "".join(c for c in text if c in "\t\n" or unicodedata.category(c) != "Cc")
    return kept.strip()


def text_positions(lm: LoadedModel) -> int | None:
    """How many positions the language model reads in all (prompt, image tokens and new tokens), or
    None when it has no fixed limit (T5's relative positions)."""
    config = lm.model.config.text_config
    if config.is_encoder_decoder:
        return None
    return getattr(config, "max_position_embeddings", None)


def _check_positions(lm: LoadedModel, prompt_tokens: int, decoding: DecodingOptions) -> None:
    """Refuse a generation that would run past the model's positions (an IndexError deep in the model)."""
    positions = text_positions(lm)
    if positions is not None and prompt_tokens + decoding.max_new_tokens > positions:
        error = InvalidArgument(
            f"max_new_tokens: at most {positions - prompt_tokens} for model {lm.name!r} with this prompt "
            f"(its language model reads {positions} positions, {prompt_tokens} of them the image and prompt)"
        )
        error.field = "max_new_tokens"
        raise error


def require_same_length(images: Sequence[object], others: Sequence[object], what: str) -> None:
    if len(images) != len(others):
        raise InvalidArgument(f"got {len(images)} images but {len(others)} {what}; give one per image")


def _decoder_only(lm: LoadedModel) -> bool:
    return not lm.model.config.text_config.is_encoder_decoder


def _encode(lm: LoadedModel, images: Sequence[Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pixel values and token ids; InstructBLIP's processor also tokenizes the prompt for the Q-Former."""
    lm.tokenizer.padding_side = "left" if _decoder_only(lm) else "right"
    images = fitting.fitted(lm.processor.image_processor, images)
    encoded = lm.processor(images=images, text=list(prompts), return_tensors="pt", padding=True)
    encoded = encoded.to(lm.device)
    encoded["pixel_values"] = encoded["pixel_values"].to(lm.dtype)
    return dict(encoded)


def _generate_kwargs(d: DecodingOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": d.max_new_tokens,
        "min_new_tokens": d.min_new_tokens,
        "repetition_penalty": d.repetition_penalty,
        "num_return_sequences": d.num_captions,
    }
    if d.use_nucleus_sampling:
        # Nucleus sampling draws each caption independently; beams would only narrow it.
        kwargs.update(do_sample=True, top_p=d.top_p, temperature=d.temperature, num_beams=1)
    else:
        kwargs.update(do_sample=False, num_beams=d.num_beams)
        if d.num_beams > 1:
            kwargs["length_penalty"] = d.length_penalty
    return kwargs


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global random state."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def _quiet() -> Iterator[None]:
    # bitsandbytes warns on every int8 matmul that fp32 inputs are cast to fp16; once is plenty.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        yield
