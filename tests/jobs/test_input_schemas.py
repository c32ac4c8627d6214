"""The JSON Schema of each job input (what the OpenAPI document says) accepts exactly what the input
model accepts, for the rules across fields: one image of three ways, embed's modes, match's two
directions, download's two sources. Checked with the validator schemathesis itself uses."""

import uuid
from typing import Any

import jsonschema_rs
import pytest
from pydantic import BaseModel, ValidationError

from jobs.inputs import CaptionInput, DownloadInput, EmbedInput, MatchInput, TrainInput

ID = str(uuid.uuid4())
PNG = "iVBORw0KGgo="
URL = "https://example.org/cat.jpg"
SHA = "a" * 64
TRAIN = {"dataset": "shapes", "output_model": "mine"}


def accepted_by_model(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def accepted_by_schema(model: type[BaseModel], data: dict[str, Any]) -> bool:
    return bool(jsonschema_rs.Draft202012Validator(model.model_json_schema()).is_valid(data))


CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (CaptionInput, {"image_id": ID}),
    (CaptionInput, {"image": PNG}),
    (CaptionInput, {"image_url": URL}),
    (CaptionInput, {"image_id": ID, "image_url": None}),
    (CaptionInput, {}),
    (CaptionInput, {"image_id": None}),
    (CaptionInput, {"image_id": ID, "image": PNG}),
    (CaptionInput, {"image_id": ID, "image": PNG, "image_url": URL}),
    (CaptionInput, {"image": "not base64!"}),
    (EmbedInput, {"image_id": ID}),
    (EmbedInput, {"mode": "image", "image_id": ID}),
    (EmbedInput, {"mode": "image", "image_id": ID, "text": "a cat"}),
    (EmbedInput, {"mode": "text", "text": "a cat"}),
    (EmbedInput, {"mode": "text", "text": "a cat", "image_id": ID}),
    (EmbedInput, {"mode": "text"}),
    (EmbedInput, {"mode": "multimodal", "text": "a cat", "image_url": URL}),
    (EmbedInput, {"mode": "multimodal", "image_url": URL}),
    (EmbedInput, {"mode": "multimodal", "text": "a cat"}),
    (MatchInput, {"image_id": ID, "texts": ["a", "b"]}),
    (MatchInput, {"texts": ["a", "b"]}),
    (MatchInput, {"text": "a", "image_ids": [ID]}),
    (MatchInput, {"text": "a", "image_ids": [ID], "image_id": ID}),
    (MatchInput, {"text": "a", "image_ids": [ID], "texts": ["b"], "image_id": ID}),
    (MatchInput, {"text": "a"}),
    (DownloadInput, {"dataset": "shapes"}),
    (DownloadInput, {"dataset": "shapes", "name": "mine"}),
    (DownloadInput, {"url": URL, "sha256": SHA, "name": "mine", "format": "jsonl"}),
    (DownloadInput, {"url": URL, "sha256": SHA, "format": "jsonl"}),
    (DownloadInput, {"dataset": "shapes", "url": URL}),
    (DownloadInput, {}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": [["circle", "square"]]}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": []}),
    (TrainInput, TRAIN | {"swap_negatives": []}),
    (TrainInput, TRAIN | {"swap_negatives": [["circle", "square"]]}),
    (TrainInput, TRAIN | {"task": "caption", "swap_negatives": [["circle", "square"]]}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": [["circle", "circle"]]}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": [["circle"]]}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": [["Circle", "square"]]}),
    (TrainInput, TRAIN | {"task": "match", "swap_negatives": [["red circle", "square"]]}),
]


@pytest.mark.parametrize(("model", "data"), CASES, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(CASES)])
def test_the_schema_accepts_what_the_model_accepts(model: type[BaseModel], data: dict[str, Any]) -> None:
    assert accepted_by_schema(model, data) == accepted_by_model(model, data), (
        f"the schema says {accepted_by_schema(model, data)}, the model {accepted_by_model(model, data)}"
    )


def test_the_cases_cover_both_answers() -> None:
    answers = {accepted_by_model(model, data) for model, data in CASES}
    assert answers == {True, False}


def test_a_manifest_download_takes_no_name() -> None:
    """A manifest entry is registered under its own name: a `name` beside it was accepted and ignored."""
    assert accepted_by_model(DownloadInput, {"dataset": "shapes"})
    assert not accepted_by_model(DownloadInput, {"dataset": "shapes", "name": "mine"})


@pytest.mark.parametrize(("seed", "accepted"), [(0, True), (2**32 - 1, True), (2**32, False), (-1, False)])
def test_a_training_seed_is_bounded_as_a_decoding_seed(seed: int, accepted: bool) -> None:
    """Past 2**63 / 1,000,003 the seed overflowed torch's generator once the model had loaded."""
    assert accepted_by_model(TrainInput, TRAIN | {"seed": seed}) == accepted
    assert accepted_by_schema(TrainInput, TRAIN | {"seed": seed}) == accepted
