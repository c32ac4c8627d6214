"""Fixtures for tests of the shared jobs package: a real, migrated Postgres database and Redis."""

from tests.support.fixtures import (
    database_url,
    dispatcher,
    empty_tables,
    engine,
    key_prefix,
    sessions,
    settings,
)

__all__ = ["database_url", "dispatcher", "empty_tables", "engine", "key_prefix", "sessions", "settings"]
