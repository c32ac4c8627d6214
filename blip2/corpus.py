"""The text the tiny checkpoints' tokenizers are trained on.

Tiny checkpoints need real tokenizers (BPE for OPT, Unigram for T5, WordPiece for the
Q-Former's BERT), and real tokenizers are learned from text. This module makes that text
deterministically: everyday caption words, the words of the synthetic `shapes` data set
(colours, shapes, positions, counts), and the prompt templates the operations use, so every
word the project itself writes or asks about has short token sequences.
"""

from itertools import product

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "brown", "pink")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "rectangle", "hexagon")
POSITIONS = ("left", "right", "top", "bottom", "center", "middle", "corner", "upper", "lower")
COUNTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SUBJECTS = (
    "man", "woman", "person", "people", "child", "cat", "dog", "bird", "horse", "car", "bus", "train",
    "plane", "boat", "table", "chair", "bed", "couch", "cup", "coffee", "plate", "food", "pizza",
    "tree", "flower", "street", "building", "room", "kitchen", "window", "astronaut", "rocket",
    "flag", "photo", "picture", "image", "painting", "sky", "water", "grass", "snow", "field",
)  # fmt: skip
VERBS = (
    "sitting", "standing", "walking", "running", "holding", "wearing", "looking", "lying",
    "eating", "drinking", "playing", "riding", "flying", "parked", "shown", "drawn",
)  # fmt: skip
PROMPT_TEMPLATES = (
    "Question: {} Answer:",
    "Question: {} Short answer:",
    "a photo of",
    "a picture of",
    "this is a picture of",
    "Describe the image in detail.",
    "A detailed description of the image:",
    "Write a short description for the image.",
    "What is in the image?",
    "How many shapes are there?",
    "What colour is the shape?",
    "What shape is on the left?",
    "Where is the circle?",
    "Is there a red square?",
    "yes",
    "no",
)


def sentences() -> list[str]:
    """Every sentence of the corpus, in a fixed order."""
    out: list[str] = list(PROMPT_TEMPLATES)
    out += _shape_sentences()
    out += _everyday_sentences()
    return out


def demo_sentences() -> list[str]:
    """The corpus plus the `shapes` grammar as the demo models read and write it, for the small
    checkpoints' tokenizers: there every word of a caption or an answer ("and", "at", "an", " yes")
    is one token, so a model cannot stop halfway through a word ("ye" for "yes")."""
    out = sentences()
    for colour, shape, position in product(COLOURS, SHAPES, POSITIONS):
        out.append(f"a {colour} {shape} at the {position} and an orange {shape} in the {position}")
        out.append(f"Question: what colour is the {shape}? Answer: {colour}")
        out.append(f"Question: what shape is at the {position}? Answer: {shape}")
        out.append(f"Question: is there a {colour} {shape}? Answer: yes")
        out.append(f"Question: is there an {colour} {shape} on the {position}? Answer: no")
    out.append("Question: how many shapes are there? Answer: two")
    return out


def _shape_sentences() -> list[str]:
    out = []
    for colour, shape, position in product(COLOURS, SHAPES, POSITIONS):
        out.append(f"a {colour} {shape} on the {position}")
        out.append(f"Question: what colour is the {shape}? Answer: {colour}")
        out.append(f"Question: where is the {colour} {shape}? Short answer: {position}")
    for count, shape in product(COUNTS, SHAPES):
        out.append(f"there are {count} {shape}s in the picture")
    return out


def _everyday_sentences() -> list[str]:
    out = []
    for subject, verb, place in product(SUBJECTS, VERBS, SUBJECTS[:12]):
        out.append(f"a {subject} {verb} next to a {place}")
    for colour, subject in product(COLOURS, SUBJECTS):
        out.append(f"the {colour} {subject} is in the picture.")
    return out
