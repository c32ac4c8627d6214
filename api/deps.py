"""What route handlers receive: `Annotated` dependencies over the one ApiContext built by create_app.

Every /v1 route depends on `CurrentPrincipal`: the Bearer API key, checked against its stored
hash and counted against its rate limit, names the tenant whose rows the route may touch.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.job_events import JobEvents
from api.key_cache import KeyCache
from api.metrics import ApiMetrics
from blip2.registry import Registry
from jobs.api_keys import Principal
from jobs.broker import Dispatcher
from jobs.db import SessionFactory
from jobs.errors import Unauthorized
from jobs.presence import PresenceCache
from jobs.rate_limit import RateLimiter
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
    rate_limiter: RateLimiter
    events: JobEvents  # wakes long-polls and event streams when their job changes
    metrics: ApiMetrics  # what /metrics exposes
    presence: PresenceCache  # which trained models have workers of their own, read at most every 2 s
    keys: KeyCache  # who each API key is, kept while `events` hears of revocations

    @property
    def submission(self) -> Submission:
        return Submission(
            sessions=self.sessions,
            dispatcher=self.dispatcher,
            registry=self.registry,
            settings=self.settings,
            presence=self.presence,
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


# auto_error=False: a missing key gets the project's own 401 shape, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key from `blip2-jobs keys create --tenant NAME`.")


def get_principal(
    context: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 without a valid key, 429 over its rate limit."""
    if credentials is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    principal = context.keys.principal(context.sessions, credentials.credentials)
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked")
    context.rate_limiter.check(principal.key_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
