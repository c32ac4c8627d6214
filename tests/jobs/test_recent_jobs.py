"""jobs/recent_jobs.py: a bounded memory of job ids."""

from uuid import UUID, uuid4

from jobs.recent_jobs import RecentJobs


def test_recent_jobs_lets_the_oldest_go_first() -> None:
    recent = RecentJobs(2)
    ids: list[UUID] = [uuid4() for _ in range(3)]
    recent.add(ids)
    assert list(recent) == ids[1:] and ids[0] not in recent
