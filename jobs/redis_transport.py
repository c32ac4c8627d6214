"""kombu's Redis transport, keeping one client per connection pool instead of building one per command.

kombu's Redis channel builds a new `redis.Redis` around its connection pool for each command it sends
outside the event loop: a job's publish in the API, the acknowledgement of each message and the
unacknowledged-message bookkeeping in the worker's main process, each task event the worker sends.
Building one (its response-callback tables) was the largest single cost of the worker's main process
(15% of its CPU) and a tenth of each publish. A client is only a handle on the pool (every command takes
a connection from the pool and gives it back), safe to share between threads, so this keeps one until
the channel's pool changes (a reconnect builds a new pool, and with it a new client).

Only for `redis://` URLs (jobs/broker.py); TLS and Sentinel URLs keep kombu's own transport.
"""

from typing import Any

from kombu.transport import redis


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
