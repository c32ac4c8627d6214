"""Decoding options shared by every generating operation (caption, vqa, instruct).

Torch-free on purpose: the registry stores per-model defaults in this type, and the HTTP
API (which never imports torch) validates job inputs against the same bounds.
"""

from dataclasses import asdict, dataclass, replace
from typing import Any

from blip2.errors import InvalidArgument

# Bounds that keep one request from occupying a GPU for minutes or exhausting its memory.
MAX_NEW_TOKENS = 512
MAX_BEAMS = 16
MAX_RETURN_SEQUENCES = 16


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
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _problems(o: DecodingOptions) -> list[str]:
    checks = [
        (1 <= o.max_new_tokens <= MAX_NEW_TOKENS, f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}"),
        (0 <= o.min_new_tokens <= o.max_new_tokens, "min_new_tokens must be between 0 and max_new_tokens"),
        (1 <= o.num_beams <= MAX_BEAMS, f"num_beams must be between 1 and {MAX_BEAMS}"),
        (0.0 < o.top_p <= 1.0, "top_p must be in (0, 1]"),
        (0.0 < o.temperature <= 10.0, "temperature must be in (0, 10]"),
        (0.0 < o.repetition_penalty <= 10.0, "repetition_penalty must be in (0, 10]"),
        (-10.0 <= o.length_penalty <= 10.0, "length_penalty must be in [-10, 10]"),
        (
            1 <= o.num_captions <= MAX_RETURN_SEQUENCES,
            f"num_captions must be between 1 and {MAX_RETURN_SEQUENCES}",
        ),
        (
            o.use_nucleus_sampling or o.num_captions <= o.num_beams,
            "num_captions cannot exceed num_beams with beam search",
        ),
    ]
    return [message for ok, message in checks if not ok]
