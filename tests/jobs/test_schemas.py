"""Job request schemas: one discriminated union over kinds, with field-named errors."""

import json
import uuid
import warnings
from datetime import datetime

import pytest
from pydantic import ValidationError

from jobs.inputs import EmbedInput, MatchInput, TrainInput
from jobs.kinds import JobKind, spec_of
from jobs.schemas import JOB_CREATE_ADAPTER, JOB_CREATE_MODELS, JOB_PUBLIC_MODELS, parse_job_public
from jobs.status import JobStatus
from tests.support.images import png_base64, png_bytes

IMAGE_ID = str(uuid.uuid4())
CaptionJobCreate = JOB_CREATE_MODELS[JobKind.CAPTION]
VqaJobCreate = JOB_CREATE_MODELS[JobKind.VQA]


def error_locs(body: dict[str, object]) -> list[tuple[object, ...]]:
    with pytest.raises(ValidationError) as caught:
        JOB_CREATE_ADAPTER.validate_python(body)
    return [e["loc"] for e in caught.value.errors()]


def test_kind_picks_the_input_schema() -> None:
    job = JOB_CREATE_ADAPTER.validate_python({"kind": "vqa", "input": {"image_id": IMAGE_ID, "question": "why?"}})
    assert isinstance(job, VqaJobCreate)
    assert job.input.question == "why?"


def test_inline_image_is_base64() -> None:
    job = JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": {"image": png_base64()}})
    assert isinstance(job, CaptionJobCreate)
    assert job.input.image == png_bytes()


def test_missing_field_is_named() -> None:
    assert error_locs({"kind": "vqa", "input": {"image_id": IMAGE_ID}}) == [("vqa", "input", "question")]


def test_unknown_kind_and_unknown_field_are_errors() -> None:
    assert error_locs({"kind": "paint", "input": {}})
    assert ("caption", "input", "colour") in error_locs(
        {"kind": "caption", "input": {"image_id": IMAGE_ID, "colour": "red"}}
    )


def test_exactly_one_image() -> None:
    assert error_locs({"kind": "caption", "input": {}}) == [("caption", "input")]
    both = {"image_id": IMAGE_ID, "image": png_base64()}
    assert error_locs({"kind": "instruct", "input": both | {"instruction": "describe"}})


def test_decoding_options_use_the_library_bounds() -> None:
    assert error_locs({"kind": "caption", "input": {"image_id": IMAGE_ID, "decoding": {"num_beams": 99}}}) == [
        ("caption", "input", "decoding", "num_beams")
    ]
    # A rule across fields names the options as a whole.
    crossed = {"image_id": IMAGE_ID, "decoding": {"num_beams": 2, "num_captions": 3}}
    assert error_locs({"kind": "caption", "input": crossed}) == [("caption", "input", "decoding")]
    ok = {"image_id": IMAGE_ID, "decoding": {"num_beams": 3, "num_captions": 3}}
    job = JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": ok})
    assert isinstance(job, CaptionJobCreate)
    assert job.input.decoding.overrides() == {"num_beams": 3, "num_captions": 3}


def test_decoding_options_may_also_be_given_flat() -> None:
    flat = {"image_id": IMAGE_ID, "num_beams": 3, "max_new_tokens": 12, "decoding": {"num_captions": 2}}
    job = JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": flat})
    assert isinstance(job, CaptionJobCreate)
    assert job.input.decoding.overrides() == {"num_beams": 3, "max_new_tokens": 12, "num_captions": 2}
    too_many = {"image_id": IMAGE_ID, "question": "why?", "max_new_tokens": 5_000_000}
    assert error_locs({"kind": "vqa", "input": too_many}) == [("vqa", "input", "decoding", "max_new_tokens")]


def test_embed_modes() -> None:
    assert EmbedInput(mode="text", text="a cat").image_needed() is False
    with pytest.raises(ValidationError):
        EmbedInput.model_validate({"mode": "text"})
    with pytest.raises(ValidationError):
        EmbedInput.model_validate({"mode": "image", "image_id": IMAGE_ID, "text": "a cat"})
    assert EmbedInput.model_validate({"mode": "multimodal", "image_id": IMAGE_ID, "text": "a cat"})


def test_match_takes_one_direction() -> None:
    by_texts = MatchInput.model_validate({"image_id": IMAGE_ID, "texts": ["a", "b"]})
    assert by_texts.candidate_count == 2
    by_images = MatchInput.model_validate({"text": "a", "image_ids": [IMAGE_ID, IMAGE_ID]})
    assert len(by_images.referenced_image_ids()) == 2
    for wrong in (
        {"texts": ["a"]},
        {"text": "a"},
        {"image_id": IMAGE_ID, "text": "a", "image_ids": [IMAGE_ID]},
    ):
        with pytest.raises(ValidationError):
            MatchInput.model_validate(wrong)


def test_stored_input_round_trips() -> None:
    job = JOB_CREATE_ADAPTER.validate_python(
        {
            "kind": "vqa",
            "input": {"image_id": IMAGE_ID, "question": "q", "examples": [{"question": "a", "answer": "b"}]},
        }
    )
    stored = job.input.model_dump(mode="json", exclude_none=True)
    assert spec_of("vqa").parse(stored) == job.input


def test_image_url_is_one_more_way_to_give_the_image() -> None:
    url = "https://example.org/cat.jpg"
    job = JOB_CREATE_ADAPTER.validate_python({"kind": "caption", "input": {"image_url": url}})
    assert isinstance(job, CaptionJobCreate)
    assert (job.input.image_url, job.input.images_given()) == (url, 1)
    assert MatchInput.model_validate({"image_url": url, "texts": ["a cat"]}).images_given() == 1

    for two in ({"image_id": IMAGE_ID}, {"image": png_base64()}):
        with pytest.raises(ValidationError, match="exactly one of image_id, image or image_url"):
            CaptionJobCreate.model_validate({"kind": "caption", "input": {"image_url": url} | two})
    with pytest.raises(ValidationError, match="mode 'text' takes no image"):
        EmbedInput.model_validate({"mode": "text", "text": "a cat", "image_url": url})
    with pytest.raises(ValidationError, match="not image_id, image or image_url"):
        MatchInput.model_validate({"text": "a", "image_ids": [IMAGE_ID], "image_url": url})


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.org/cat.jpg", "cat.jpg", "https://x/" + "a" * 2000]
)
def test_image_url_must_be_http_and_of_sane_length(url: str) -> None:
    assert error_locs({"kind": "caption", "input": {"image_url": url}}) == [("caption", "input", "image_url")]


def test_image_url_in_the_json_schema() -> None:
    schema = CaptionJobCreate.model_json_schema()
    image_url = schema["$defs"]["CaptionInput"]["properties"]["image_url"]
    # http(s), and no NUL anywhere (Postgres keeps none in JSON): the schema tells clients both.
    assert image_url["anyOf"][0] == {"type": "string", "pattern": "^https?://[^\\x00]*$", "maxLength": 2000}


URL_DOWNLOAD = {"url": "https://example.org/c.zip", "sha256": "a" * 64, "name": "coco-mini", "format": "coco_captions"}


def test_a_download_takes_its_formats_options() -> None:
    options = {"val_annotations": "annotations/captions.json", "val_images": "images", "root": "."}
    job = spec_of("download").parse(URL_DOWNLOAD | {"options": options})
    assert job.options == options  # type: ignore[union-attr]
    assert spec_of("download").parse(URL_DOWNLOAD).options == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("download", "says"),
    [
        (URL_DOWNLOAD | {"options": {"val_questions": "q.json"}}, "val_questions: not an option of coco_captions"),
        (URL_DOWNLOAD | {"options": {"val_annotations": ""}}, "at least 1 character"),
        ({"dataset": "shapes", "options": {"root": "x"}}, "options go with a url download"),
    ],
)
def test_download_options_the_format_does_not_read_are_refused(download: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        spec_of("download").parse(download)
    assert caught.value.errors()[0]["loc"][0] == "options", "the error should name the options field"


# ---- jobs read back -------------------------------------------------------------------------


def stored_job(**fields: object) -> dict[str, object]:
    """A train job as the API writes it out, with its input and progress from an older version."""
    job = {
        "id": str(uuid.uuid4()), "kind": "train", "model": "tiny-opt", "status": "running",
        "input": {"dataset": "shapes", "output_model": "mine", "max_steps": -3, "optimiser": "sgd"},
        "result": None, "error": None, "attempts": 1, "priority": "interactive", "cached": False,
        "progress": 0.5, "progress_detail": {"step": "six"}, "created_at": "2026-11-30T10:00:00Z",
        "started_at": "2026-11-30T10:00:01Z", "finished_at": None, "webhook": None,
    }  # fmt: skip
    return job | fields


def test_a_client_reads_a_job_stored_by_an_older_version_as_stored() -> None:
    """What the API answers for such a job (jobs/schemas.py `job_as_stored`), the client reads back the
    same way: the kind-typed fields as they are, everything else typed, and it writes out unchanged."""
    data = stored_job()
    job = parse_job_public(data)
    assert isinstance(job, JOB_PUBLIC_MODELS[JobKind.TRAIN])
    assert (job.input, job.progress_detail) == (data["input"], data["progress_detail"])
    assert isinstance(job.id, uuid.UUID) and isinstance(job.created_at, datetime) and job.status is JobStatus.RUNNING
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns when it writes out a value not of the field's type
        assert json.loads(job.model_dump_json()) == data


def test_a_valid_job_reads_back_typed() -> None:
    data = stored_job(input={"dataset": "shapes", "output_model": "mine"}, progress_detail=None)
    job = parse_job_public(data)
    assert isinstance(job.input, TrainInput) and job.input.max_steps > 0


@pytest.mark.parametrize("fields", [{"status": "paused"}, {"id": "not-an-id"}, {"kind": "paint"}])
def test_anything_else_wrong_with_a_job_is_still_an_error(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_job_public(stored_job(**fields))
