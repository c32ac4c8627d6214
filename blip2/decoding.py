"""Decoding options shared by every generating operation (caption, vqa, instruct): bounds, defaults, merging.

Torch-free on purpose: the registry stores per-model defaults in this type, and the HTTP API (which
never imports torch) builds its request schema from `LIMITS`, so a bound is written here once.

    options = resolve(lm.spec.caption_defaults, {"num_beams": 3})   # the model's defaults, then the request's
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from blip2.errors import InvalidArgument

# Bounds that keep one request from occupying a GPU for minutes or exhausting its memory.
MAX_NEW_TOKENS = 512
MAX_BEAMS = 16
MAX_RETURN_SEQUENCES = 16


@dataclass(frozen=True)
class Range:
    """The values one option may take: `low` to `high`, `low` itself excluded when `open_low`."""

    low: float
    high: float
    open_low: bool = False

    def contains(self, value: float) -> bool:
        return (self.low < value if self.open_low else self.low <= value) and value <= self.high

    def describe(self, name: str) -> str:
        if self.open_low:
            return f"{name} must be in ({self.low:g}, {self.high:g}]"
        return f"{name} must be between {self.low:g} and {self.high:g}"


# Every numeric option's range, read by the checks below and by the HTTP schema (jobs/inputs.py).
LIMITS: dict[str, Range] = {
    "max_new_tokens": Range(1, MAX_NEW_TOKENS),
    "min_new_tokens": Range(0, MAX_NEW_TOKENS),
    "num_beams": Range(1, MAX_BEAMS),
    "top_p": Range(0, 1, open_low=True),
    "temperature": Range(0, 10, open_low=True),
    "repetition_penalty": Range(0, 10, open_low=True),
    "length_penalty": Range(-10, 10),
    "num_captions": Range(1, MAX_RETURN_SEQUENCES),
    "seed": Range(0, 2**32 - 1),
}


@dataclass(frozen=True)
class DecodingOptions:
    """How text is generated. Defaults are LAVIS's captioning defaults (5 beams, 30 tokens)."""

    max_new_tokens: int = 30
    min_new_tokens: int = 1
    num_beams: int = 5
    use_nucleus_sampling: bool = False  # sample from the top-p nucleus instead of beam search
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0  # > 0 favours longer beams, < 0 shorter ones (beam search only)
    num_captions: int = 1  # sequences returned per input
    seed: int | None = None  # makes sampling reproducible

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise InvalidArgument(problem)

    def with_overrides(self, **overrides: Any) -> "DecodingOptions":
        """A copy with the given (non-None) fields replaced, validated again."""
        unknown = overrides.keys() - OPTION_NAMES
        if unknown:
            raise InvalidArgument(f"unknown decoding options: {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sequences_per_input(self) -> int:
        """How many sequences the model carries per input while generating (beams, or samples)."""
        return self.num_captions if self.use_nucleus_sampling else max(self.num_beams, self.num_captions)


OPTION_NAMES = frozenset(f.name for f in fields(DecodingOptions))
# What callers pass: full options (used as they are), the options they set (over the model's defaults), or nothing.
Decoding = DecodingOptions | Mapping[str, Any] | None


def resolve(defaults: DecodingOptions, requested: Decoding) -> DecodingOptions:
    """The options an operation runs with: the model's defaults for it, with what the caller set.

    This is the one place where defaults and a request's options are merged.
    """
    if requested is None:
        return defaults
    if isinstance(requested, DecodingOptions):
        return requested
    return defaults.with_overrides(**requested)


def _problems(o: DecodingOptions) -> list[str]:
    # getattr, not asdict: this runs for every set of options built (each submission, each job run),
    # and asdict deep-copies every field first.
    ranged = [
        limit.describe(name)
        for name, limit in LIMITS.items()
        if (value := getattr(o, name)) is not None and not limit.contains(value)
    ]
    rules = [
        (o.min_new_tokens <= o.max_new_tokens, "min_new_tokens must be between 0 and max_new_tokens"),
        (
            o.use_nucleus_sampling or o.num_captions <= o.num_beams,
            "num_captions cannot exceed num_beams with beam search",
        ),
    ]
    return ranged + [message for ok, message in rules if not ok]
