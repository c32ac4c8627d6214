"""What route handlers receive: `Annotated` dependencies over the one ApiContext built by create_app."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from blip2.registry import Registry
from jobs.broker import Dispatcher
from jobs.db import SessionFactory
from jobs.settings import Settings
from jobs.submission import Submission


@dataclass(frozen=True)
class ApiContext:
    """The services one API process holds, built once from Settings by create_app."""

    settings: Settings
    engine: Engine
    sessions: SessionFactory
    celery: Celery
    dispatcher: Dispatcher
    registry: Registry

    @property
    def submission(self) -> Submission:
        return Submission(
            sessions=self.sessions, dispatcher=self.dispatcher, registry=self.registry, settings=self.settings
        )


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


def get_settings(context: ContextDep) -> Settings:
    return context.settings


def get_session(context: ContextDep) -> Iterator[Session]:
    """A session for one request; routes commit what they change, before they return."""
    with context.sessions() as session:
        yield session


def get_submission(context: ContextDep) -> Submission:
    return context.submission


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SubmissionDep = Annotated[Submission, Depends(get_submission)]
