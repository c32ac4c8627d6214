"""/metrics: Prometheus's scrape endpoint, behind an API key like every /v1 route (api/metrics.py)."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ContextDep, CurrentPrincipal

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(context: ContextDep, _principal: CurrentPrincipal) -> Response:
    """The API's metrics and the jobs table's counts; 401 without a valid API key."""
    return Response(context.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
