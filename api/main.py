"""The FastAPI app: `create_app(settings)` builds the services once and collects the routers.

blip2-jobs api --port 8000      # or: uvicorn --factory api.main:app_from_environment
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import redis.asyncio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from api.deps import ApiContext
from api.errors import install_error_handlers
from api.job_events import JobEvents
from api.key_cache import KeyCache
from api.limits import LimitRequestBody
from api.long_poll import JobReads
from api.metrics import ApiMetrics, JobsCollector
from api.routes import catalog, health, images, jobs, metrics, usage
from api.submission_groups import SubmissionGroups
from blip2.registry import Registry
from jobs.broker import Dispatcher, create_celery
from jobs.db import create_db_engine, create_session_factory
from jobs.image_store import ImageHashes
from jobs.presence import PresenceCache
from jobs.rate_limit import RateLimiter
from jobs.settings import Settings
from jobs.submission import Submission
from jobs.sweeper import sweep_once
from jobs.webhook_delivery import CLAIM_BATCH, deliver_due

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The API for these settings; connections open lazily, so building it touches no server."""
    context = build_context(settings)
    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline wheel, not a CDN: they work air-gapped.
    app = FastAPIOffline(title="blip2-jobs", version="0.1.0", lifespan=_lifespan)
    app.state.context = context
    install_error_handlers(app)
    app.add_middleware(LimitRequestBody, settings=settings)  # 413 while an oversized body arrives
    context.metrics.instrument(app)
    for router in (images.router, jobs.router, catalog.router, usage.router, health.router, metrics.router):
        app.include_router(router)
    return app


def app_from_environment() -> FastAPI:
    """The app with Settings read from the environment (for `uvicorn --factory`)."""
    return create_app(Settings())


def build_context(settings: Settings) -> ApiContext:
    engine = create_db_engine(settings)
    sessions = create_session_factory(engine)
    registry = Registry.load(settings.BLIP2_MODELS_FILE)
    celery = create_celery(settings)
    # Short timeouts: with Redis down, a request waits a second for the limiter, not a minute.
    keys = KeyCache()
    counters = redis.asyncio.Redis.from_url(settings.broker_url, socket_timeout=1, socket_connect_timeout=1)
    dispatcher, presence, images = Dispatcher(celery), PresenceCache(), ImageHashes()
    submission = Submission(sessions, dispatcher, registry, settings, presence, images)
    return ApiContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        celery=celery,
        dispatcher=dispatcher,
        registry=registry,
        rate_limiter=RateLimiter(
            counters,
            requests=settings.RATE_LIMIT_REQUESTS,
            window_s=settings.RATE_LIMIT_WINDOW_S,
            key_prefix=settings.REDIS_KEY_PREFIX,
        ),
        events=JobEvents(settings.DATABASE_URL, keys),
        reads=JobReads(sessions),
        metrics=ApiMetrics(jobs=JobsCollector(sessions, registry, cache_s=settings.METRICS_JOBS_CACHE_S)),
        presence=presence,
        keys=keys,
        images=images,
        submissions=SubmissionGroups(submission),
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ApiContext = app.state.context
    background = [asyncio.create_task(context.events.listen_forever())]
    if context.settings.SWEEP_INTERVAL_S > 0:
        background.append(asyncio.create_task(_sweep_forever(context)))
    if context.settings.WEBHOOK_INTERVAL_S > 0:
        background.append(asyncio.create_task(_deliver_forever(context)))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        context.celery.close()
        await context.rate_limiter.close()
        context.engine.dispose()


async def _sweep_forever(context: ApiContext) -> None:
    """Run the outbox sweep every SWEEP_INTERVAL_S; a failed sweep is logged and tried again.

    No running job is taken for lost before the database has answered this process's sweeps for a
    full lease: while it was unreachable (a restart, a failover) no worker could write a heartbeat
    either, and a job still running must not be run a second time for that.
    """
    settings = context.settings
    answering_since: float | None = None
    while True:
        await asyncio.sleep(settings.SWEEP_INTERVAL_S)
        now = time.monotonic()
        recover_lost = answering_since is not None and now - answering_since >= settings.JOB_LEASE_S
        try:
            await run_in_threadpool(
                sweep_once, context.sessions, context.dispatcher, settings, recover_lost=recover_lost
            )
        except Exception:
            answering_since = None
            log.exception("outbox sweep failed; trying again in %s s", settings.SWEEP_INTERVAL_S)
        else:
            answering_since = now if answering_since is None else answering_since


async def _deliver_forever(context: ApiContext) -> None:
    """Send due webhooks every WEBHOOK_INTERVAL_S, and at once when a job with a webhook finishes (its
    notification wakes this loop); a failed pass is logged and tried again. Other API processes may do the same:
    each delivery is claimed by one of them (jobs/webhook_delivery.py)."""
    interval = context.settings.WEBHOOK_INTERVAL_S
    while True:
        try:
            attempted = await run_in_threadpool(deliver_due, context.sessions, context.settings)
        except Exception:
            attempted = 0
            log.exception("webhook delivery failed; trying again in %s s", interval)
        if attempted < CLAIM_BATCH:  # a full claim: more may be due at once
            await context.events.changed(context.events.webhook_due, interval)
