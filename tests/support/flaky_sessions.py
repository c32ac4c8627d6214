"""A session factory that cannot reach the database for its first sessions, as while Postgres restarts."""

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from jobs.db import SessionFactory, create_session_factory
from jobs.embedded import free_port


class FlakySessions:
    """Its first `failures` sessions connect to a port where nothing listens (connection refused);
    the rest are sessions of `real`. `calls` counts the sessions asked for."""

    def __init__(self, real: SessionFactory, failures: int) -> None:
        self._engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
        self._unreachable = create_session_factory(self._engine)
        self._real = real
        self.failures = failures
        self.calls = 0

    def __call__(self) -> Session:
        self.calls += 1
        return (self._unreachable if self.calls <= self.failures else self._real)()

    def close(self) -> None:
        self._engine.dispose()
