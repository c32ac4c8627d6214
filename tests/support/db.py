"""Counting the SQL statements a piece of code sends: round trips are what a hot path is made of."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session


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
