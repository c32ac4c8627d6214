"""Pytest fixtures for the job system: a migrated database, a broker key space, Settings, sessions.

Imported by tests/conftest.py, so every test package can use them.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, text

from blip2.registry import Registry
from jobs.broker import Dispatcher, create_celery
from jobs.db import SessionFactory, create_db_engine, create_session_factory
from jobs.schema_migrations import upgrade
from jobs.settings import Settings
from jobs.submission import Submission
from tests.support.auth import OTHER_TENANT, TENANT, new_key
from tests.support.broker import drain
from tests.support.processes import running_worker
from tests.support.services import make_settings, temporary_database, temporary_key_prefix


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this test session's own."""
    with temporary_database() as url:
        yield url


@pytest.fixture(scope="session")
def key_prefix() -> Iterator[str]:
    """This test session's Redis key prefix."""
    with temporary_key_prefix() as prefix:
        yield prefix


@pytest.fixture(scope="session")
def settings(database_url: str, key_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the session's database and key prefix, with the schema migrated to head."""
    made = make_settings(database_url, key_prefix, tmp_path_factory.mktemp("data"))
    upgrade(made)
    return made


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    made = create_db_engine(settings)
    yield made
    made.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> SessionFactory:
    return create_session_factory(engine)


@pytest.fixture(scope="session")
def dispatcher(settings: Settings) -> Iterator[Dispatcher]:
    celery = create_celery(settings)
    yield Dispatcher(celery)
    celery.close()


@pytest.fixture
def ctx(sessions: SessionFactory, dispatcher: Dispatcher, settings: Settings, key_prefix: str) -> Submission:
    """What a submission needs, over the tests' database and broker, with the default model's queue
    (`infer.tiny-opt`) emptied first. Tests of workers define their own, with their workers' settings."""
    drain(key_prefix, "infer.tiny-opt")
    return Submission(sessions=sessions, dispatcher=dispatcher, registry=Registry.load(), settings=settings)


@pytest.fixture(scope="session")
def api_key(sessions: SessionFactory) -> str:
    """A key of the tests' tenant (`tests.support.auth.TENANT`), made once per session."""
    return new_key(sessions, TENANT)


@pytest.fixture(scope="session")
def other_api_key(sessions: SessionFactory) -> str:
    """A key of a second tenant, for checking that tenants never see each other's rows."""
    return new_key(sessions, OTHER_TENANT)


@pytest.fixture
def empty_tables(engine: Engine) -> None:
    """Start the test with no jobs, images or idempotency keys, and no state derived from jobs (the
    tenants' queue counters, the queues' fair-share clocks)."""
    empty_job_tables(engine)


def empty_job_tables(engine: Engine) -> None:
    """What `empty_tables` does, for a test to call between its own steps."""
    with engine.begin() as connection:
        connection.execute(
            text("TRUNCATE jobs, images, idempotency_keys, tenant_queues, queue_clocks, queue_shares CASCADE")
        )


@pytest.fixture(scope="session")
def models_dir(tiny_data_dir: Path) -> Path:
    """Where workers find the tiny checkpoints (built once per session by tests/conftest.py)."""
    return tiny_data_dir


@pytest.fixture(scope="session")
def worker_settings(settings: Settings, models_dir: Path) -> Settings:
    """The session's settings, with the tiny checkpoints' data directory."""
    return settings.model_copy(update={"BLIP2_DATA_DIR": models_dir})


def _every_tiny_model(worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real `blip2-jobs worker` serving every tiny model; yields its log file."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with running_worker(worker_settings, log):
        yield log


def worker_fixture(scope: Literal["module", "package"]) -> Any:
    """The `worker` fixture (`_every_tiny_model`) for the packages or modules whose tests need one.

    Never for the session: a worker left running after its tests would consume the messages of the
    tests that follow (tests/api reads what waits on the queues) and run their jobs. A package or a
    module that uses it says `worker = worker_fixture("package")` in its conftest or itself."""
    return pytest.fixture(scope=scope, name="worker")(_every_tiny_model)
