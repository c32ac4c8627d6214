"""kombu's Redis transport, keeping one client per connection pool instead of building one per command.

kombu's Redis channel builds a new `redis.Redis` around its connection pool for each command it sends
outside the event loop: a job's publish in the API, the acknowledgement of each message and the
unacknowledged-message bookkeeping in the worker's main process, each task event the worker sends.
Building one (its response-callback tables) was the largest single cost of the worker's main process
(15% of its CPU) and a tenth of each publish. A client is only a handle on the pool (every command takes
a connection from the pool and gives it back), safe to share between threads, so this keeps one until
the channel's pool changes (a reconnect builds a new pool, and with it a new client).

It serves `redis://` URLs (`use_for_redis_urls`, called by jobs/broker.py): kombu finds a URL's
transport by its scheme in `TRANSPORT_ALIASES`, and the scheme stays `redis`, so the URL reads the
same everywhere it is shown (the worker's banner, Flower's broker page, which talks to Redis itself
by that scheme). TLS (`rediss://`) and Sentinel URLs keep kombu's own transports.
"""

from typing import Any

from kombu.transport import TRANSPORT_ALIASES, _transport_cache, redis


class Channel(redis.Channel):
    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client, built once by kombu already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        kept = self._kept_client
        if kept is None or kept.connection_pool is not self.pool:
            kept = self._kept_client = super()._create_client()  # type: ignore[no-untyped-call]
        return kept


class Transport(redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """Make this process's kombu connections to `redis://` URLs use this transport (idempotent)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    _transport_cache.pop("redis", None)
