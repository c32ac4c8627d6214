"""Errors the job system raises on purpose: one base class, one small subclass per failure.

The HTTP edge (`api/errors.py`) maps each to a status code once; every error carries a stable `code`.
"""


class JobsError(Exception):
    """Base class for the job system's own errors; `field` names the input at fault, where one is."""

    code = "jobs_error"

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        # For errors that pass (rate limits, a full queue): when to try again, sent as Retry-After.
        self.retry_after_s = retry_after_s


class JobNotFound(JobsError):
    """No job has this id."""

    code = "job_not_found"


class UnknownImage(JobsError):
    """A job names an image id that this tenant never uploaded."""

    code = "unknown_image"


class JobNotCancelable(JobsError):
    """The job already finished; canceling it would change nothing."""

    code = "job_not_cancelable"


class IdempotencyKeyReused(JobsError):
    """The Idempotency-Key was first used for a different request."""

    code = "idempotency_key_reused"


class UploadTooLarge(JobsError):
    """The uploaded file has more bytes than MAX_UPLOAD_BYTES."""

    code = "upload_too_large"


class InvalidCursor(JobsError):
    """The pagination cursor is not one this API handed out."""

    code = "invalid_cursor"


class BatchTooLarge(JobsError):
    """A job carries more images or texts than MAX_BATCH_SIZE."""

    code = "batch_too_large"


class LossCurveNotFound(JobsError):
    """No model of this name that the tenant may read has a loss curve."""

    code = "loss_curve_not_found"


class EmbeddedServerFailed(JobsError):
    """The embedded PostgreSQL or Redis (jobs/embedded.py) did not start."""

    code = "embedded_server_failed"


class NotReady(JobsError):
    """Postgres or Redis does not answer (the readiness check)."""

    code = "not_ready"


class ModelNameTaken(JobsError):
    """A training job's output_model is already the name of a model."""

    code = "model_name_taken"


class Unauthorized(JobsError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"


class RateLimited(JobsError):
    """This API key sent more requests than RATE_LIMIT_REQUESTS in RATE_LIMIT_WINDOW_S."""

    code = "rate_limited"


class TenantQueueFull(JobsError):
    """The tenant already has MAX_UNFINISHED_JOBS_PER_TENANT jobs queued or running."""

    code = "tenant_queue_full"


class InvalidTenant(JobsError):
    """A tenant name that cannot be one (it is also a directory name)."""

    code = "invalid_tenant"


class ApiKeyNotFound(JobsError):
    """`keys revoke` names no key (or a prefix several keys share)."""

    code = "api_key_not_found"


class ImageNotFound(JobsError):
    """GET /v1/images/{id}: no image of this tenant has the id."""

    code = "image_not_found"


class FetchFailed(JobsError):
    """An image URL could not be fetched: unreachable, timed out, or answered with an error status."""

    code = "fetch_failed"


class InvalidWebhookUrl(JobsError):
    """A webhook URL whose host does not resolve: no delivery could ever reach it."""

    code = "invalid_webhook_url"


class TooManyJobs(JobsError):
    """A batch request carries more jobs than MAX_JOBS_PER_BATCH."""

    code = "too_many_jobs"


class InvalidTimeRange(JobsError):
    """A usage window whose end is not after its start, or a date that cannot be read."""

    code = "invalid_time_range"
