"""worker/ended_here.py and worker/batches.py: the message of a job that ended in this worker is
dropped unread, by the main process when the job process told it (through a pipe, across the fork),
else by the job process itself.

Most messages arrive after the batch that ran their job (a batch runs the jobs of many messages), so
this is what a busy worker does most often; the real workers of tests/worker/test_batches.py show it
end to end, the main process dropping them.
"""

import multiprocessing
from collections.abc import Iterator
from uuid import uuid4

import pytest

from jobs.recent_jobs import RecentJobs
from jobs.settings import Settings
from worker import batches
from worker.batches import _remember_ended, run_batch_for
from worker.ended_here import EndedHere
from worker.runtime import WorkerRuntime


class Claimed(Exception):
    """The run went on to claim: it would have read Postgres."""


def _no_claim(*_args: object) -> batches.Batch:
    raise Claimed


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_ENDED", RecentJobs(4096))
    monkeypatch.setattr(batches, "_claim", _no_claim)


@pytest.fixture
def ended() -> Iterator[EndedHere]:
    channel = EndedHere()
    yield channel
    channel.close()


def _unstarted(ended_here: EndedHere | None = None) -> WorkerRuntime:
    return WorkerRuntime(settings=Settings(), preload=None, ended_here=ended_here)  # no database, no model


@pytest.mark.usefixtures("fresh")
def test_the_message_of_a_job_ended_here_claims_nothing_and_any_other_claims() -> None:
    runtime = _unstarted()
    ended, other = uuid4(), uuid4()
    _remember_ended(runtime, [ended])
    assert run_batch_for(runtime, ended, "batch-1") == []
    with pytest.raises(Claimed):
        run_batch_for(runtime, other, "batch-2")


@pytest.mark.usefixtures("fresh")
def test_the_jobs_ended_here_are_bounded_the_oldest_let_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batches, "_ENDED", RecentJobs(2))
    runtime = _unstarted()
    first, second, third = uuid4(), uuid4(), uuid4()
    _remember_ended(runtime, [first, second])
    _remember_ended(runtime, [third])
    assert list(batches._ENDED) == [second, third]
    with pytest.raises(Claimed):  # let go: its message reads Postgres again, as any other would
        run_batch_for(runtime, first, "batch-3")
    assert run_batch_for(runtime, third, "batch-4") == []


@pytest.mark.usefixtures("fresh")
def test_a_forked_job_process_tells_the_main_process_which_jobs_ended(ended: EndedHere) -> None:
    told, untold = [uuid4() for _ in range(300)], uuid4()  # more than one atomic pipe write
    child = multiprocessing.get_context("fork").Process(target=_remember_ended, args=(_unstarted(ended), told))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert all(ended.ended_here(job_id) for job_id in told)
    assert not ended.ended_here(untold)
    assert list(ended.heard) == told, "ids were split or reordered on the way"


def test_a_full_pipe_never_blocks_the_job_process_and_splits_no_id(ended: EndedHere) -> None:
    told = [uuid4() for _ in range(20_000)]  # 320 kB: the pipe holds 64 kB while nobody reads
    ended.tell(told)  # returns: a write that does not fit is left out
    ended.heard.kept = len(told)
    assert ended.ended_here(told[0])
    heard = list(ended.heard)
    assert 0 < len(heard) < len(told)
    assert heard == told[: len(heard)], "what arrived is not the ids told, whole and in order"
    assert not ended.ended_here(told[-1])  # left out: its message goes to the job process, which drops it


def test_the_main_process_keeps_the_latest_jobs_heard(ended: EndedHere) -> None:
    ended.heard.kept = 3
    first, *rest = [uuid4() for _ in range(4)]
    ended.tell([first])
    ended.tell(rest)
    assert not ended.ended_here(first)
    assert all(ended.ended_here(job_id) for job_id in rest)
