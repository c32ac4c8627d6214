"""JobStatus: which states are terminal."""

from jobs.status import JobStatus


def test_finished_states_are_terminal() -> None:
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }


def test_status_is_its_string_value() -> None:
    assert JobStatus("queued") is JobStatus.QUEUED
    assert f"{JobStatus.RUNNING}" == "running"
