"""api/job_events.py: who a notification wakes, and the ends it remembers for a late waiter."""

import asyncio
from uuid import uuid4

from api import job_events
from api.job_events import JobEvents


def test_a_long_poll_waiter_wakes_only_when_its_job_ends() -> None:
    async def run() -> tuple[bool, bool, bool]:
        events, job_id = JobEvents(None), uuid4()
        async with events.watching(job_id, ends_only=True) as end, events.watching(job_id) as change:
            events._wake(f"{job_id} running")
            woke_on_running = (end.is_set(), change.is_set())
            events._wake(f"{job_id} succeeded")
            return woke_on_running[0], woke_on_running[1], end.is_set()

    end_woke_on_running, change_woke_on_running, end_woke_on_end = asyncio.run(run())
    assert (end_woke_on_running, change_woke_on_running, end_woke_on_end) == (False, True, True)


def test_an_end_heard_before_anyone_watched_is_remembered_for_a_while() -> None:
    events = JobEvents(None)
    ended, running = uuid4(), uuid4()
    events._wake(f"{ended} failed")
    events._wake(f"{running} running")
    for malformed in ("not-a-uuid succeeded", "", "no-status-at-all"):
        events._wake(malformed)
    assert events.ended_lately(ended) and not events.ended_lately(running)
    assert not events.webhook_due.is_set(), "no job with a webhook ended"
    events._wake(f"{uuid4()} running webhook")
    assert not events.webhook_due.is_set(), "a job with a webhook started; it is not due yet"
    events._wake(f"{uuid4()} succeeded webhook")
    assert events.webhook_due.is_set()
    later = [uuid4() for _ in range(job_events._FINISHED_REMEMBERED)]
    for job_id in later:
        events._wake(f"{job_id} succeeded")
    assert not events.ended_lately(ended), "the oldest end is forgotten once the memory is full"
    assert events.ended_lately(later[0]) and events.ended_lately(later[-1])
