"""Sending jobs' messages: together in one round trip, and when the broker cannot be reached, never
raising (the job rows are committed already: the sweeper sends their messages later)."""

import logging
import uuid
from collections.abc import Iterator

import pytest

from jobs.broker import Dispatcher, JobMessage, create_celery
from jobs.embedded import free_port
from jobs.kinds import JobKind
from jobs.settings import Settings
from tests.support.broker import drain, waiting_job_ids

QUEUES = ("infer.dispatch-test-a", "infer.dispatch-test-b")


@pytest.fixture
def empty_queues(key_prefix: str) -> Iterator[None]:
    for queue in QUEUES:
        drain(key_prefix, queue)
    yield
    for queue in QUEUES:
        drain(key_prefix, queue)


def messages(count: int) -> list[JobMessage]:
    return [JobMessage(uuid.uuid4(), QUEUES[n % 2], JobKind.CAPTION, "tiny-opt") for n in range(count)]


@pytest.mark.usefixtures("empty_queues")
def test_messages_sent_together_each_arrive_on_their_queue_in_order(dispatcher: Dispatcher, key_prefix: str) -> None:
    sent = messages(7)
    dispatcher.try_send_all(sent)
    for queue in QUEUES:
        assert waiting_job_ids(key_prefix, queue) == [str(m.job_id) for m in sent if m.queue == queue]
    dispatcher.try_send_all(sent[:1])  # one alone, as try_send sends it
    dispatcher.try_send_all([])
    assert waiting_job_ids(key_prefix, QUEUES[0])[-1] == str(sent[0].job_id)


def test_messages_the_broker_cannot_take_are_tried_alone_and_left_to_the_sweeper(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = settings.model_copy(update={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_celery(unreachable)
    try:
        with caplog.at_level(logging.WARNING, logger="jobs.broker"):
            Dispatcher(app).try_send_all(messages(3))  # returns: nothing raised
    finally:
        app.close()
    logged = [record.getMessage() for record in caplog.records]
    assert logged[0] == "could not send 3 messages together; sending each alone", logged
    assert sum("the sweeper will re-send it" in line for line in logged[1:]) == 3, logged
