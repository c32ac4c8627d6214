"""Reading the messages waiting in a Redis queue, to check what the API and the sweeper sent."""

import base64
import json

import redis

from tests.support.services import REDIS_URL


def _job_ids(message: bytes) -> list[str]:
    """The job ids a run_job message carries (its positional arguments)."""
    args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
    return list(args)


def waiting_job_ids(key_prefix: str, queue: str) -> list[str]:
    """The job ids of the run_job messages waiting in `queue`, oldest first."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = client.lrange(key_prefix + queue, 0, -1)
    finally:
        client.close()
    return [job_id for message in reversed(raw) for job_id in _job_ids(message)]  # kombu LPUSHes, consumers BRPOP


def withhold(key_prefix: str, queue: str, job_ids: set[str]) -> int:
    """Remove the waiting messages of these jobs from `queue` (the rest stay, in order); how many were removed."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        wanted = [m for m in client.lrange(key_prefix + queue, 0, -1) if set(_job_ids(m)) & job_ids]
        return sum(int(client.lrem(key_prefix + queue, 1, message)) for message in wanted)
    finally:
        client.close()


def drain(key_prefix: str, queue: str) -> None:
    """Remove every message waiting in `queue`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(key_prefix + queue)
    finally:
        client.close()
