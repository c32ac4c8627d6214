"""Reading the messages waiting in a Redis queue, to check what the API and the sweeper sent."""

import base64
import json

import redis

from tests.support.services import REDIS_URL


def waiting_job_ids(key_prefix: str, queue: str) -> list[str]:
    """The job ids of the run_job messages waiting in `queue`, oldest first."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw = client.lrange(key_prefix + queue, 0, -1)
    finally:
        client.close()
    ids = []
    for message in reversed(raw):  # kombu LPUSHes, consumers BRPOP
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
        ids.extend(args)
    return ids


def drain(key_prefix: str, queue: str) -> None:
    """Remove every message waiting in `queue`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(key_prefix + queue)
    finally:
        client.close()
