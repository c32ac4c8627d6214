"""The broker's Redis transport keeps one client per connection pool, and what is sent through it, from
many threads at once, all arrives."""

import threading
import uuid

import pytest
from kombu import Connection

from jobs.broker import Dispatcher, JobMessage, create_celery
from jobs.kinds import JobKind
from jobs.redis_transport import Channel, Transport
from jobs.settings import Settings
from tests.support.broker import drain, waiting_job_ids

QUEUE = "infer.transport-test"


@pytest.fixture
def celery_app(settings: Settings, key_prefix: str):  # type: ignore[no-untyped-def]
    app = create_celery(settings)
    drain(key_prefix, QUEUE)
    yield app
    drain(key_prefix, QUEUE)
    app.close()


def test_the_app_uses_the_transport_that_keeps_its_client(celery_app) -> None:  # type: ignore[no-untyped-def]
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel), type(channel)
        first = channel._create_client()
        assert channel._create_client() is first, "a new client per command"
        assert first.connection_pool is channel.pool


def test_a_new_pool_gets_a_new_client(celery_app) -> None:  # type: ignore[no-untyped-def]
    """A reconnect replaces the channel's pool: the client kept for the old one is not used with it."""
    with celery_app.connection_for_write() as connection:
        channel = connection.default_channel
        old = channel._create_client()
        channel._pool = None  # what kombu does when the channel's connection is closed
        new = channel._create_client()
        assert new is not old
        assert new.connection_pool is channel.pool
        assert new.ping()


def test_messages_sent_from_many_threads_all_arrive(celery_app, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The API publishes from its worker threads: one shared client, every message in the queue once."""
    dispatcher = Dispatcher(celery_app)
    sent: list[str] = []
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            job_id = uuid.uuid4()
            dispatcher.send(JobMessage(job_id, QUEUE, JobKind.CAPTION, "tiny-opt"))
            with lock:
                sent.append(str(job_id))

    threads = [threading.Thread(target=send, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    waiting = waiting_job_ids(key_prefix, QUEUE)
    assert sorted(waiting) == sorted(sent), f"{len(waiting)} of {len(sent)} messages arrived"


def test_the_url_still_reads_redis(celery_app) -> None:  # type: ignore[no-untyped-def]
    """The worker's banner and Flower's broker page show the URL, and Flower talks to Redis by its scheme."""
    with celery_app.connection_for_write() as connection:
        assert connection.as_uri().startswith("redis://"), connection.as_uri()


def test_tls_urls_keep_kombus_transport(celery_app) -> None:  # type: ignore[no-untyped-def]
    """A rediss:// URL (TLS) needs kombu's own handling of its scheme."""
    assert Connection("redis://127.0.0.1:6379/0").get_transport_cls() is Transport
    assert Connection("rediss://127.0.0.1:6380/0").get_transport_cls() is not Transport
