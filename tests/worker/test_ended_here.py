"""worker/batches.py: the message of a job that ended in this process returns at once, reading nothing.

Most messages arrive after the batch that ran their job (a batch runs the jobs of many messages), so
this is what a busy worker does most often; the real workers of tests/worker/test_batches.py show it
end to end.
"""

from uuid import uuid4

import pytest

from jobs.settings import Settings
from worker import batches
from worker.batches import _remember_ended, run_batch_for
from worker.runtime import WorkerRuntime


class Claimed(Exception):
    """The run went on to claim: it would have read Postgres."""


def _no_claim(*_args: object) -> batches.Batch:
    raise Claimed


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_ENDED", {})
    monkeypatch.setattr(batches, "_claim", _no_claim)


@pytest.mark.usefixtures("fresh")
def test_the_message_of_a_job_ended_here_claims_nothing_and_any_other_claims() -> None:
    runtime = WorkerRuntime(settings=Settings(), preload=None)  # never started: no database, no model
    ended, other = uuid4(), uuid4()
    _remember_ended([ended])
    assert run_batch_for(runtime, ended, "batch-1") == []
    with pytest.raises(Claimed):
        run_batch_for(runtime, other, "batch-2")


@pytest.mark.usefixtures("fresh")
def test_the_jobs_ended_here_are_bounded_the_oldest_let_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_ENDED_KEPT", 2)
    runtime = WorkerRuntime(settings=Settings(), preload=None)
    first, second, third = uuid4(), uuid4(), uuid4()
    _remember_ended([first, second])
    _remember_ended([third])
    assert list(batches._ENDED) == [second, third]
    with pytest.raises(Claimed):  # let go: its message reads Postgres again, as any other would
        run_batch_for(runtime, first, "batch-3")
    assert run_batch_for(runtime, third, "batch-4") == []
