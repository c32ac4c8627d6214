"""Counting the SQL statements a piece of code sends (round trips are what a hot path is made of),
and seeing whether another process is inside a transaction."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
from sqlalchemy import bindparam, event, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import Integer

from jobs.db import SessionFactory


@contextmanager
def statements(session: Session) -> Iterator[list[str]]:
    """The statements sent through the session's engine (by any of its connections) while inside,
    each as its text, appended as they are sent."""
    engine = session.get_bind()
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


_OPEN_TRANSACTIONS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(:ports) AND xact_start IS NOT NULL"
).bindparams(bindparam("ports", type_=ARRAY(Integer())))


def in_a_transaction(process: psutil.Process, sessions: SessionFactory) -> bool:
    """Whether any of `process`'s connections to the database behind `sessions` is inside a
    transaction: a process stopped (SIGSTOP) there holds its row locks, and every write that needs
    them waits (at most DB_IDLE_IN_TRANSACTION_TIMEOUT_S, after which Postgres ends its session).
    Its connections are told apart by their client ports, so the database must be reached over TCP."""
    ports = [c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr]
    if not ports:
        return False
    with sessions() as session:
        return bool(session.scalar(_OPEN_TRANSACTIONS, {"ports": ports}))
