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
from starlette.concurrency import run_in_threadpool

from api.job_events import JobEvents
from api.key_cache import KeyCache
from api.long_poll import JobReads
from api.metrics import ApiMetrics
from api.submission_groups import SubmissionGroups
from blip2.registry import Registry
from jobs.api_keys import Principal
from jobs.broker import Dispatcher
from jobs.db import SessionFactory
from jobs.errors import Unauthorized
from jobs.image_store import ImageHashes
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
    reads: JobReads  # what they then read, the jobs woken together in one statement
    metrics: ApiMetrics  # what /metrics exposes
    presence: PresenceCache  # which trained models have workers of their own, read at most every 2 s
    keys: KeyCache  # who each API key is, kept while `events` hears of revocations
    images: ImageHashes  # the content hash of each image submissions named so far
    submissions: SubmissionGroups  # single submissions, those arriving together recorded together

    @property
    def submission(self) -> Submission:
        return self.submissions.submission


async def get_context(request: Request) -> ApiContext:
    # async: FastAPI would run a plain function on a worker thread, a hand-off for every request.
    context: ApiContext = request.app.state.context
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


async def get_settings(context: ContextDep) -> Settings:
    return context.settings


def get_session(context: ContextDep) -> Iterator[Session]:
    """A session for one request; routes commit what they change, before they return."""
    with context.sessions() as session:
        yield session


async def get_submission(context: ContextDep) -> Submission:
    return context.submission


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SubmissionDep = Annotated[Submission, Depends(get_submission)]


# auto_error=False: a missing key gets the project's own 401 shape, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key from `blip2-jobs keys create --tenant NAME`.")


async def get_principal(
    context: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The caller, from `Authorization: Bearer <key>`; 401 without a valid key, 429 over its rate limit.

    On the event loop: a key the process keeps needs no I/O, and the rate limit's round trip to Redis
    is awaited; only a key read from Postgres takes a worker thread."""
    if credentials is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    secret = credentials.credentials
    principal = context.keys.kept(secret) or await run_in_threadpool(context.keys.principal, context.sessions, secret)
    if principal is None:
        raise Unauthorized("the API key is unknown or revoked")
    await context.rate_limiter.check(principal.key_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
