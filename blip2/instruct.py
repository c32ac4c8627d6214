"""Free-form instructions about an image.

InstructBLIP models pass the instruction to the Q-Former as well as to the language model,
so the visual features it extracts depend on what was asked; its processor does that. Plain
BLIP-2 models take the instruction as a prompt for the language model only.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from PIL.Image import Image

from blip2.decoding import Decoding, resolve
from blip2.errors import InvalidArgument
from blip2.generation import generate_texts, require_same_length
from blip2.loading import LoadedModel


@dataclass(frozen=True)
class GeneratedText:
    text: str


def instruct(
    lm: LoadedModel,
    images: Sequence[Image],
    instructions: Sequence[str],
    *,
    decoding: Decoding = None,
) -> list[GeneratedText]:
    """Follow `instructions[i]` about `images[i]`."""
    require_same_length(images, instructions, "instructions")
    if any(not i.strip() for i in instructions):
        raise InvalidArgument("an instruction is empty")
    decoding = resolve(lm.spec.instruct_defaults, decoding).with_overrides(num_captions=1)
    texts = generate_texts(lm, images, [i.strip() for i in instructions], decoding)
    return [GeneratedText(text=t[0]) for t in texts]
