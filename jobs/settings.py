"""The one typed settings object for the API, the workers, Flower and `blip2-jobs up`.

Read from the environment (or a `.env` file) once, by whoever starts a process, and passed in:

    settings = Settings()
    app = create_app(settings)
"""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Refused as the Flower password anywhere but development (the full-stack-fastapi-template rule).
DEFAULT_SECRET = "changethis"
_PSYCOPG_SCHEMES = ("postgresql://", "postgres://")
# The most jobs one batch request may carry whatever MAX_JOBS_PER_BATCH says (the schema's bound).
JOBS_PER_BATCH_CEILING = 1000


class MissingSetting(ValueError):
    """A setting this process needs was not given (e.g. DATABASE_URL for the API)."""


class Settings(BaseSettings):
    """Everything configurable about the service; field names are the environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    ENVIRONMENT: Literal["development", "staging", "production"] = "development"
    # postgresql://user@host:port/db; unset means `blip2-jobs up` starts an embedded server.
    DATABASE_URL: str | None = None
    # redis://host:port/db; unset means `blip2-jobs up` starts an embedded server.
    REDIS_URL: str | None = None
    # Prepended to every broker key, so several deployments (or test runs) can share one Redis db.
    REDIS_KEY_PREFIX: str = ""

    # Trained by this project on `shapes` (blip2/pretrained/): real captions and answers offline.
    BLIP2_DEFAULT_MODEL: str = "shapes-blip2"
    # For jobs that name no model and only a retrieval model (family itm) can run: match, text and
    # multimodal embeddings, training and evaluation of a match task.
    BLIP2_DEFAULT_MATCH_MODEL: str = "shapes-itm"
    BLIP2_DATA_DIR: Path = Path("./data")
    # A user registry file adding model names to the built-in ones.
    BLIP2_MODELS_FILE: Path | None = None

    # The largest image, uploaded or fetched from an image_url; an upload's body may add the multipart framing.
    MAX_UPLOAD_BYTES: int = Field(default=20 * 1024 * 1024, gt=0)
    # The largest JSON request body: an inline image of MAX_UPLOAD_BYTES in base64 (4/3 of 20 MiB is
    # 26.7 MiB) and the rest of the job. A larger body is refused with 413 while it arrives.
    MAX_REQUEST_BYTES: int = Field(default=28 * 1024 * 1024, gt=0)
    # A decompression-bomb guard, applied before any pixel is decoded.
    MAX_IMAGE_PIXELS: int = Field(default=40_000_000, gt=0)
    # A worker keeps the images it decoded lately, up to this many pixels (3 bytes each; 0: none).
    WORKER_IMAGE_CACHE_PIXELS: int = Field(default=16_000_000, ge=0)
    # A worker holds this many of its tenants' trained models, the least recently used let go first.
    WORKER_MAX_TRAINED_MODELS: int = Field(default=4, ge=1)
    # The most images or texts one job may carry (match), and the largest batch a worker runs.
    MAX_BATCH_SIZE: int = Field(default=32, gt=0)
    LONG_POLL_MAX_S: float = Field(default=30.0, ge=0, le=30)

    # A job still queued this long after its last send is sent again (the outbox sweep).
    QUEUED_TOO_LONG_S: float = Field(default=60.0, gt=0)
    # How often the API runs that sweep; 0 turns it off (another process sweeps).
    SWEEP_INTERVAL_S: float = Field(default=15.0, ge=0)
    # Runs of a job (first try included) before a job whose worker keeps dying is failed.
    MAX_ATTEMPTS: int = Field(default=3, ge=1)
    TASK_SOFT_TIME_LIMIT_S: int = Field(default=600, gt=0)
    TASK_HARD_TIME_LIMIT_S: int = Field(default=660, gt=0)
    # Loading a model in the worker's child process may take this long before Celery gives up on it.
    MODEL_LOAD_TIMEOUT_S: int = Field(default=900, gt=0)
    # Training, evaluation and downloads (queues `train`, `download`) run for hours, not minutes.
    LONG_TASK_TIME_LIMIT_S: int = Field(default=7 * 24 * 3600, gt=0)
    # A running job's worker refreshes its heartbeat this often; one silent for JOB_LEASE_S is lost
    # (its job is queued again; training resumes from its last checkpoint).
    HEARTBEAT_INTERVAL_S: float = Field(default=10.0, gt=0)
    JOB_LEASE_S: float = Field(default=60.0, gt=0)
    # While Postgres is unreachable (a restart, a failover) a worker retries its claim and its final
    # write this long, so a job that finished its model work meanwhile keeps its result.
    DB_RETRY_S: float = Field(default=120.0, ge=0)
    # Postgres ends a session of ours that sits this long inside a transaction without a statement
    # (0: never): a process frozen mid-transaction (a paused VM, SIGSTOP) would otherwise hold its row
    # locks for as long as it is frozen, and the jobs it was finishing hold the tenant's counter, so
    # every submission of that tenant would wait for it. Our transactions last milliseconds.
    DB_IDLE_IN_TRANSACTION_TIMEOUT_S: float = Field(default=30.0, ge=0)

    # Hosts downloads may reach although they resolve to a non-public address (comma-separated):
    # a private mirror, or 127.0.0.1 in tests. Every other host must resolve to public addresses.
    FETCH_ALLOWED_HOSTS: str = ""
    # An image_url fetch may take this long to connect, to wait for each read, and in all.
    FETCH_TIMEOUT_S: float = Field(default=10.0, gt=0)

    # Requests one API key may send per window (0: no limit); over it, 429 with Retry-After.
    RATE_LIMIT_REQUESTS: int = Field(default=1200, ge=0)
    RATE_LIMIT_WINDOW_S: float = Field(default=60.0, gt=0)
    # Jobs one tenant may have queued or running at once; over it, submissions get 503 with Retry-After.
    MAX_UNFINISHED_JOBS_PER_TENANT: int = Field(default=1000, gt=0)
    TENANT_QUEUE_FULL_RETRY_AFTER_S: int = Field(default=10, gt=0)
    # A batch-priority job runs only while no interactive job of its model waits, until it has waited
    # this long; from then on it counts as interactive, so it is never starved.
    BATCH_PRIORITY_MAX_WAIT_S: float = Field(default=600.0, gt=0)
    # Whether a registry model's cached result answers an identical job of another tenant (results of
    # a tenant's own trained model are never shared).
    RESULT_CACHE_SHARED: bool = False

    # POST /v1/jobs:batch takes at most this many jobs in one request (and one transaction).
    MAX_JOBS_PER_BATCH: int = Field(default=100, gt=0, le=JOBS_PER_BATCH_CEILING)

    # Webhooks (jobs/webhooks.py): each API process sends due deliveries every WEBHOOK_INTERVAL_S
    # (0: this process sends none), each POST waiting at most WEBHOOK_TIMEOUT_S for its answer. A
    # failed delivery is tried again after WEBHOOK_RETRY_BASE_S, doubling per attempt up to
    # WEBHOOK_RETRY_MAX_S, and given up after WEBHOOK_MAX_ATTEMPTS.
    WEBHOOK_INTERVAL_S: float = Field(default=1.0, ge=0)
    WEBHOOK_TIMEOUT_S: float = Field(default=10.0, gt=0)
    WEBHOOK_RETRY_BASE_S: float = Field(default=5.0, gt=0)
    WEBHOOK_RETRY_MAX_S: float = Field(default=3600.0, gt=0)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=10, ge=1)

    FLOWER_USER: str = "admin"
    FLOWER_PASSWORD: str = DEFAULT_SECRET

    # One read of the jobs table serves the API's /metrics scrapes for this long (0: every scrape reads).
    METRICS_JOBS_CACHE_S: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _check_limits_and_secrets(self) -> Self:
        if self.TASK_HARD_TIME_LIMIT_S <= self.TASK_SOFT_TIME_LIMIT_S:
            raise ValueError("TASK_HARD_TIME_LIMIT_S must be greater than TASK_SOFT_TIME_LIMIT_S")
        if self.JOB_LEASE_S <= 2 * self.HEARTBEAT_INTERVAL_S:
            raise ValueError("JOB_LEASE_S must be more than twice HEARTBEAT_INTERVAL_S")
        if self.ENVIRONMENT != "development" and self.FLOWER_PASSWORD == DEFAULT_SECRET:
            raise ValueError(f"FLOWER_PASSWORD is {DEFAULT_SECRET!r}; set it outside development")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
        url = self.require("DATABASE_URL")
        for scheme in _PSYCOPG_SCHEMES:
            if url.startswith(scheme):
                return "postgresql+psycopg://" + url.removeprefix(scheme)
        raise MissingSetting(f"DATABASE_URL must start with postgresql://, got {url.split(':', 1)[0]}:")

    @property
    def fetch_allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.FETCH_ALLOWED_HOSTS.split(",") if h.strip()]

    @property
    def broker_url(self) -> str:
        """REDIS_URL, which must be set by the time a process talks to the broker."""
        return self.require("REDIS_URL")

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Longer than the inference hard time limit, so Redis does not re-deliver a job still running.

        Long jobs outlive it; a re-delivery of one, like any message, claims the next job queued on its
        queue (a job runs once whichever message claims it), and ends at once when none is.
        """
        return self.TASK_HARD_TIME_LIMIT_S + 300

    def require(self, name: Literal["DATABASE_URL", "REDIS_URL"]) -> str:
        """The value of a URL setting, or a clear error naming it."""
        value = getattr(self, name)
        if not value:
            raise MissingSetting(f"{name} is not set")
        return str(value)
