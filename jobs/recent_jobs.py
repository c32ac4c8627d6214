"""A bounded memory of job ids: the latest `kept` added, the oldest let go first.

What a process remembers of jobs it heard of lately: a worker, the jobs that ended in its batches
(worker/ended_here.py); an API process, the jobs it heard end (api/job_events.py).
"""

from collections.abc import Iterable, Iterator
from uuid import UUID


class RecentJobs:
    """The latest `kept` job ids added, the oldest let go first."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._ids: dict[UUID, None] = {}

    def add(self, job_ids: Iterable[UUID]) -> None:
        for job_id in job_ids:
            self._ids[job_id] = None
        while len(self._ids) > self.kept:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __iter__(self) -> Iterator[UUID]:
        return iter(self._ids)
