"""The engine and session factory, built from Settings by whoever starts a process (never at import)."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings

SessionFactory = sessionmaker[Session]


def create_db_engine(settings: Settings) -> Engine:
    """An engine for DATABASE_URL.

    No ping before each checkout (a round trip per request): a connection that died with a restarted
    Postgres fails its first statement instead, and that error empties the pool of every connection
    older than it, so one request answers 503 (or one worker write is retried) and the next reconnect.
    """
    return create_engine(settings.sqlalchemy_url, pool_size=10, max_overflow=20)


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
