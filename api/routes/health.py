"""/healthz (the process answers) and /readyz (Postgres and Redis are reachable)."""

from typing import Literal

import redis
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import ContextDep
from api.responses import ErrorResponse
from jobs.db import database_reachable
from jobs.errors import NotReady

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The answer of a health check that passed."""

    status: Literal["ok"] = "ok"


def broker_reachable(url: str) -> bool:
    """True when Redis answers PING within a second."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@router.get("/healthz")
def healthz() -> Health:
    """The process is alive."""
    return Health()


@router.get("/readyz", responses={503: {"model": ErrorResponse, "description": "Postgres or Redis is unreachable"}})
async def readyz(context: ContextDep) -> Health:
    """Postgres and Redis both answer."""
    checks = {
        "database": await run_in_threadpool(database_reachable, context.engine),
        "broker": await run_in_threadpool(broker_reachable, context.settings.broker_url),
    }
    down = [name for name, ok in checks.items() if not ok]
    if down:
        raise NotReady(f"unreachable: {', '.join(down)}")
    return Health()
