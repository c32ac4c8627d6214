"""Real Postgres databases and Redis key spaces made for one test session, and removed after it.

Each test session creates its own database with a random name on the Postgres at
TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) and uses a random key
prefix on the Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/15), so no user data is touched.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from jobs.settings import Settings

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@contextmanager
def temporary_database() -> Iterator[str]:
    """A new empty database; yields its postgresql:// URL and drops it afterwards."""
    name = f"blip2_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def temporary_key_prefix() -> Iterator[str]:
    """A random Redis key prefix; every key under it is deleted afterwards."""
    prefix = f"blip2-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def make_settings(database_url: str, key_prefix: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: its own database and key prefix, no .env file, no background sweep."""
    values: dict[str, object] = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": key_prefix,
        "BLIP2_DATA_DIR": data_dir,
        "SWEEP_INTERVAL_S": 0,
        "WEBHOOK_INTERVAL_S": 0,  # only the API processes that a test starts for it deliver webhooks
        "BLIP2_DEFAULT_MODEL": "tiny-opt",  # the test workers serve the tiny models' queues
        "FETCH_ALLOWED_HOSTS": "127.0.0.1",  # the tests' own file servers; `localhost` stays forbidden
        # Workers beat twice a second, so a killed worker's job is recovered within seconds.
        "HEARTBEAT_INTERVAL_S": 0.5,
        "JOB_LEASE_S": 5.0,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg, arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to build the same Settings."""
    env = {name: str(value) for name, value in settings.model_dump().items() if value is not None}
    return os.environ.copy() | env
