"""Visual question answering with the family's prompt template and optional few-shot examples.

    answer(model, [image], ["what is the cat lying on?"])[0].text  # "a couch"

The template is `Question: {} Answer:` for OPT and `Question: {} Short answer:` for Flan-T5.
Few-shot examples are written before the question in the same template (in-context learning,
as in the BLIP-2 paper); the answer is cut at the point where the model starts a new question.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL.Image import Image

from blip2.decoding import Decoding, resolve
from blip2.errors import InvalidArgument
from blip2.generation import generate_texts, require_same_length
from blip2.loading import LoadedModel


@dataclass(frozen=True)
class QAExample:
    question: str
    answer: str


@dataclass(frozen=True)
class Answer:
    text: str
    prompt: str


def answer(
    lm: LoadedModel,
    images: Sequence[Image],
    questions: Sequence[str],
    *,
    examples: Sequence[QAExample] = (),
    decoding: Decoding = None,
) -> list[Answer]:
    """Answer `questions[i]` about `images[i]`."""
    require_same_length(images, questions, "questions")
    template = lm.templates.vqa
    prompts = [build_prompt(template, q, examples) for q in questions]
    decoding = resolve(lm.spec.vqa_defaults, decoding).with_overrides(num_captions=1)
    texts = generate_texts(lm, images, prompts, decoding)
    return [Answer(text=clean_answer(t[0], template), prompt=p) for t, p in zip(texts, prompts, strict=True)]


def build_prompt(template: str, question: str, examples: Sequence[QAExample] = ()) -> str:
    if not question.strip():
        raise InvalidArgument("the question is empty")
    shots = [f"{template.format(e.question.strip())} {e.answer.strip()}" for e in examples]
    return " ".join([*shots, template.format(question.strip())])


def clean_answer(text: str, template: str) -> str:
    """The answer alone: first line, stopped where the model starts repeating the template."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    lead = template.split("{}")[0].strip()  # e.g. "Question:"
    if lead:
        text = re.split(re.escape(lead), text, maxsplit=1)[0]
    return text.strip()
