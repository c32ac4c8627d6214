"""The engine and session factory, built from Settings by whoever starts a process (never at import)."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings

SessionFactory = sessionmaker[Session]

# What the jobs table's insert trigger raises when a tenant already has its limit of unfinished jobs
# (migration 0004); the limit is the connection's `blip2.max_unfinished_jobs`, set as it connects.
TENANT_QUEUE_FULL_SQLSTATE = "B2J01"


# Connections a process keeps open, and how many more it may open for a burst (each closed again after
# use: a new Postgres backend per checkout, so a process whose steady load needs more than it keeps
# opens and closes connections all the time). 20 covers an API process serving 16 clients waiting on
# their jobs at once (bench/service.py counted a third of a connection opened per job with 10); four
# API processes keep at most 80 of Postgres's default 100.
POOL_SIZE = 20
POOL_OVERFLOW = 10


def create_db_engine(settings: Settings) -> Engine:
    """An engine for DATABASE_URL, each connection told the per-tenant limit of unfinished jobs, and
    ended by Postgres once idle in a transaction for DB_IDLE_IN_TRANSACTION_TIMEOUT_S: a frozen
    process's locks are let go, and when it thaws its statement fails as a lost connection would
    (a worker's writes are retried on a new one, worker/db_retry.py).

    No ping before each checkout (a round trip per request): a connection that died with a restarted
    Postgres fails its first statement instead, and that error empties the pool of every connection
    older than it, so one request answers 503 (or one worker write is retried) and the next reconnect.
    """
    engine = create_engine(settings.sqlalchemy_url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    limit = settings.MAX_UNFINISHED_JOBS_PER_TENANT
    idle_ms = round(settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _configure(connection: Any, _record: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET blip2.max_unfinished_jobs = {int(limit)}")
            cursor.execute(f"SET idle_in_transaction_session_timeout = {int(idle_ms)}")
        connection.commit()

    return engine


def is_tenant_queue_full(exc: BaseException) -> bool:
    """True when the jobs table refused an insert because the tenant's queue is full."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == TENANT_QUEUE_FULL_SQLSTATE


def create_session_factory(engine: Engine) -> SessionFactory:
    """Sessions that keep loaded rows readable after commit (routes return them)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


def database_reachable(engine: Engine) -> bool:
    """True when a trivial query succeeds (the readiness check)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def is_connection_error(exc: BaseException) -> bool:
    """True when the database could not be reached or the connection broke (restart, failover, network):
    an error worth trying again, unlike a bad statement or a violated constraint."""
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


def database_error_summary(exc: BaseException) -> str:
    """The driver's first line of a database error, without SQLAlchemy's statement and links."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
