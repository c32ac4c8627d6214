"""The error responses each route documents in the OpenAPI schema, in the one shape api/errors.py sends.

    router = APIRouter(..., responses=error_responses(401, 422, 429))
    @router.get("/{job_id}", responses=error_responses(404))

Clients and schemathesis read these: every status a route can answer is in its schema.
"""

from typing import Any

from pydantic import BaseModel

from jobs.schemas import ErrorDetail


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorDetail


_DESCRIPTIONS = {
    401: "No API key, or an unknown or revoked one (`unauthorized`)",
    404: "No such resource for this tenant",
    409: "Conflicts with the resource's state",
    413: "Too large: the body, the upload or the image's pixels",
    415: "Not an accepted image, or not the type it claims to be",
    422: "Invalid input; `field` names it",
    429: "Over this API key's rate limit; see Retry-After (`rate_limited`)",
    503: "Postgres unavailable, or the tenant's queue is full; see Retry-After",
}

# Every /v1 route can answer these.
COMMON_ERRORS = (401, 422, 429, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these statuses, each with the error body's schema."""
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]} for status in statuses}
