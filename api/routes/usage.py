"""/v1/usage: what the calling tenant used: jobs, images, worker-seconds by model."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import CurrentPrincipal, SessionDep, get_principal
from api.responses import COMMON_ERRORS, error_responses
from jobs.schemas import UsagePublic
from jobs.usage import UsageWindow, tenant_usage

router = APIRouter(
    prefix="/v1/usage",
    tags=["usage"],
    dependencies=[Depends(get_principal)],
    responses=error_responses(*COMMON_ERRORS),
)

FromQuery = Annotated[
    datetime | None, Query(alias="from", description="Start of the window (ISO 8601; UTC if no zone).")
]
ToQuery = Annotated[datetime | None, Query(description="End of the window, exclusive (ISO 8601; UTC if no zone).")]


@router.get("")
def read_usage(
    session: SessionDep, principal: CurrentPrincipal, start: FromQuery = None, to: ToQuery = None
) -> UsagePublic:
    """The tenant's jobs submitted in the window by kind and status, images stored, and worker-seconds
    by model of the jobs that finished in it."""
    return tenant_usage(session, principal.tenant, UsageWindow(start, to))
