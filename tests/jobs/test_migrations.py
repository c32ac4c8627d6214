"""Migrations: an empty database goes up to head, matches the ORM, and comes down clean."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text

from jobs.models import Base
from jobs.schema_migrations import downgrade, upgrade
from jobs.settings import Settings
from tests.support.services import temporary_database


@pytest.fixture
def empty_database() -> Iterator[Settings]:
    with temporary_database() as url:
        yield Settings(_env_file=None, DATABASE_URL=url)  # type: ignore[call-arg]


def table_names(settings: Settings) -> set[str]:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_then_downgrade(empty_database: Settings) -> None:
    upgrade(empty_database)
    expected = {"api_keys", "jobs", "images", "idempotency_keys", "datasets", "trained_models", "alembic_version",
                "tenant_queues", "tenants", "queue_clocks", "queue_shares", "worker_presence"}  # fmt: skip
    assert expected <= table_names(empty_database)
    downgrade(empty_database)
    assert table_names(empty_database) <= {"alembic_version"}
    upgrade(empty_database)  # and up again, from base
    assert "jobs" in table_names(empty_database)


def test_migrated_schema_matches_the_models(empty_database: Settings) -> None:
    upgrade(empty_database)
    engine = create_engine(empty_database.sqlalchemy_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


@contextmanager
def upgraded_with_rows(database: Settings, revision: str, *inserts: str) -> Iterator[Connection]:
    """The database at `revision` with rows inserted, then upgraded to head; a connection to read it."""
    upgrade(database, revision)
    engine = create_engine(database.sqlalchemy_url)
    try:
        with engine.begin() as connection:
            for statement in inserts:
                connection.execute(text(statement))
        upgrade(database)
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def test_rows_from_before_tenants_belong_to_the_default_tenant(empty_database: Settings) -> None:
    with upgraded_with_rows(
        empty_database,
        "0002",
        "INSERT INTO jobs (id, kind, model, queue, status, input, attempts, dispatch_count)"
        " VALUES (gen_random_uuid(), 'caption', 'tiny-opt', 'infer.tiny-opt', 'succeeded', '{}', 1, 1)",
        "INSERT INTO datasets (name, format, path, tasks, splits, source)"
        " VALUES ('old', 'shapes', '/d', '[]', '{}', 'x')",
    ) as connection:
        assert connection.execute(text("SELECT tenant FROM jobs")).scalars().all() == ["default"]
        assert connection.execute(text("SELECT tenant, name FROM datasets")).all() == [("default", "old")]
        # New rows must name their tenant: the migration's default is gone again.
        columns = {c["name"]: c for c in inspect(connection).get_columns("jobs")}
        assert columns["tenant"]["default"] is None and not columns["tenant"]["nullable"]


def test_jobs_from_before_priorities_are_interactive_and_not_cached(empty_database: Settings) -> None:
    with upgraded_with_rows(
        empty_database,
        "0004",
        "INSERT INTO jobs (id, tenant, kind, model, queue, status, input, attempts, dispatch_count)"
        " VALUES (gen_random_uuid(), 't', 'caption', 'tiny-opt', 'infer.tiny-opt', 'queued', '{}', 0, 1)",
    ) as connection:
        row = connection.execute(text("SELECT priority, cached, cache_key, worker_seconds FROM jobs")).one()
        assert tuple(row) == ("interactive", False, None, None)
        columns = {c["name"]: c for c in inspect(connection).get_columns("jobs")}
        assert columns["priority"]["default"] is None, "new rows must name their priority"
