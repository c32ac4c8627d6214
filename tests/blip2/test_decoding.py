"""Decoding options: defaults, overrides and the bounds that protect a GPU."""

import pytest

from blip2.decoding import MAX_NEW_TOKENS, DecodingOptions
from blip2.errors import InvalidArgument


def test_defaults_are_lavis_captioning_defaults() -> None:
    options = DecodingOptions()
    assert (options.num_beams, options.max_new_tokens, options.min_new_tokens) == (5, 30, 1)


def test_overrides_keep_unset_fields() -> None:
    options = DecodingOptions().with_overrides(num_beams=2, top_p=None)
    assert (options.num_beams, options.top_p, options.max_new_tokens) == (2, 0.9, 30)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": 5_000_000}, f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"min_new_tokens": 40}, "min_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"length_penalty": 50.0}, "length_penalty"),
        ({"num_captions": 6}, "num_captions cannot exceed num_beams"),
    ],
)
def test_out_of_range_values_are_refused(fields: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        DecodingOptions(**fields)  # type: ignore[arg-type]


def test_sampling_may_return_more_captions_than_beams() -> None:
    assert DecodingOptions(use_nucleus_sampling=True, num_beams=1, num_captions=4).num_captions == 4
