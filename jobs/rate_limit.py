"""Per-key request rate limits, counted in Redis so every API process shares one count.

A fixed window per key: the first request of a window sets a counter that expires with the
window; a request that takes the count past the limit is refused with the seconds left in the
window (Retry-After). Simple, one round trip, and at most twice the limit across a window edge.
If Redis cannot be reached the request is let through: a broker outage must not also take down
reading results, and the outbox already copes with submissions meanwhile.
"""

import logging
import math
import time
from uuid import UUID

import redis
import redis.asyncio

from jobs.errors import RateLimited

log = logging.getLogger(__name__)


class RateLimiter:
    """At most `requests` per `window_s` seconds per key; `requests=0` turns limiting off.

    Asynchronous: the API checks a request's key on its event loop, with no thread for the round trip.
    """

    def __init__(self, client: redis.asyncio.Redis, *, requests: int, window_s: float, key_prefix: str = "") -> None:
        self._client = client
        self._requests = requests
        self._window_s = window_s
        self._prefix = key_prefix

    async def check(self, key_id: UUID) -> None:
        """Count one request for this key; RateLimited (with retry_after_s) once it is over the limit."""
        if self._requests <= 0:
            return
        now = time.time()
        window = int(now // self._window_s)
        counter = f"{self._prefix}ratelimit:{key_id}:{window}"
        try:
            async with self._client.pipeline() as pipeline:
                pipeline.incr(counter)
                pipeline.expire(counter, math.ceil(self._window_s) + 1)
                count = int((await pipeline.execute())[0])
        except redis.RedisError as exc:
            log.warning("rate limit not checked, Redis unreachable: %s", exc)
            return
        if count > self._requests:
            retry_after = max(1, math.ceil((window + 1) * self._window_s - now))
            raise RateLimited(
                f"over {self._requests} requests in {self._window_s:g} s for this API key; retry in {retry_after} s",
                retry_after_s=retry_after,
            )

    async def close(self) -> None:
        await self._client.aclose()
