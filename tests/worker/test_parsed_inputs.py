"""worker/batches.py _parsed: a job's stored input is parsed once per process, bounded, a bad one failing alone."""

from uuid import uuid4

import pytest

from jobs.inputs import CaptionInput
from jobs.kinds import JobKind
from jobs.models import Job
from worker import batches
from worker.batches import JobError, _parsed


def caption_job(image_id: str) -> Job:
    return Job(id=uuid4(), kind=JobKind.CAPTION, input={"image_id": image_id, "max_new_tokens": 7})


def test_a_job_is_parsed_once_and_the_oldest_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_PARSED", {})
    monkeypatch.setattr(batches, "_PARSED_KEPT", 2)
    first, second, third = (caption_job(str(uuid4())) for _ in range(3))
    parsed = _parsed(first)
    assert isinstance(parsed, CaptionInput) and parsed.decoding.max_new_tokens == 7
    assert str(parsed.image_id) == first.input["image_id"]
    assert _parsed(first) is parsed, "the same job was parsed again"
    _parsed(second), _parsed(third)
    assert list(batches._PARSED) == [second.id, third.id], "the oldest was not the one let go"
    assert _parsed(first) is not parsed, "a job let go came back from the cache"


def test_a_stored_input_that_is_no_input_is_an_error_of_its_own_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_PARSED", {})
    bad = Job(id=uuid4(), kind=JobKind.CAPTION, input={"image_id": "not-an-id"})
    error = _parsed(bad)
    assert isinstance(error, JobError) and error.code == "invalid_input"
    assert _parsed(bad) is error
    assert isinstance(_parsed(caption_job(str(uuid4()))), CaptionInput)
