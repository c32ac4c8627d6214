"""What the clients say to the API and how they read its answers, with no I/O of its own.

Each operation is a flow: a generator that yields the `Call`s it needs, one at a time, is sent each
answer, and returns a typed result. `Client` and `AsyncClient` run the same flows, one with httpx's
sync client and one with its async one, so the two can never disagree; only sending (with retries
on 429 and 503, `retry_delay`) and sleeping differ between them.
"""

import email.utils
import hashlib
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

import httpx

from blip2_jobs.errors import ApiError, WaitTimedOut
from jobs.schemas import (
    ErrorDetail,
    ImagePublic,
    ImagesPublic,
    JobCreateBase,
    JobPublicBase,
    JobsBatchCreate,
    JobsBatchItem,
    JobsBatchPublic,
    JobsPublic,
    parse_job_public,
)

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 8
DEFAULT_BATCH_CHUNK = 100  # the server's default MAX_JOBS_PER_BATCH
LONG_POLL_S = 30.0  # the server's ceiling for ?wait=
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call:
    """One HTTP request of a flow."""

    method: str
    path: str
    params: dict[str, str | float] = field(default_factory=dict)
    json_body: bytes | None = None
    upload: bytes | None = None  # multipart field `file`
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None  # None: the client's own

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = self.headers | ({"content-type": "application/json"} if self.json_body is not None else {})
        files = {"file": ("image", self.upload, "application/octet-stream")} if self.upload is not None else None
        timeout = httpx.USE_CLIENT_DEFAULT if self.timeout_s is None else self.timeout_s
        return http.build_request(
            self.method, self.path, params=self.params, content=self.json_body, files=files, headers=headers,
            timeout=timeout,
        )  # fmt: skip


T = TypeVar("T")
# A flow yields calls, is sent their responses, and returns its result.
Flow: TypeAlias = Generator[Call, httpx.Response, T]


@dataclass(frozen=True)
class BatchJob:
    """One job of `submit_many`, with its own Idempotency-Key (None: none)."""

    request: JobCreateBase
    idempotency_key: str | None = None


def http_options(base_url: str, api_key: str, timeout_s: float) -> dict[str, Any]:
    """The httpx client options both clients use: the server, the key, the default timeout."""
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "blip2-jobs-client"}
    return {"base_url": base_url, "headers": headers, "timeout": timeout_s}


def retry_delay(response: httpx.Response, attempt: int, max_retries: int) -> float | None:
    """Seconds to wait before sending the call again, or None to keep this answer.

    429 (rate limited) and 503 (queue full, database away) are tried again after their Retry-After
    (seconds or an HTTP date), or after 0.5 s doubling per attempt where they name none.
    """
    if response.status_code not in RETRY_STATUSES or attempt >= max_retries:
        return None
    return _retry_after_s(response.headers.get("retry-after")) or min(0.5 * 2**attempt, 30.0)


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded, else ApiError with the API's error code, message and field."""
    if response.is_success:
        return response
    try:
        detail = ErrorDetail.model_validate(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = ErrorDetail(code=f"http_{response.status_code}", message=response.text[:500])
    raise ApiError(response.status_code, detail.code, detail.message, detail.field)


# ---- flows ----------------------------------------------------------------------------------


def upload_image(data: bytes, known: dict[str, UUID]) -> Flow[ImagePublic]:
    """The tenant's image with these bytes: found by its SHA-256 if uploaded before (by anyone using
    the key's tenant), uploaded otherwise. `known` remembers ids this client has seen."""
    digest = hashlib.sha256(data).hexdigest()
    if digest in known:
        return (yield from get_image(known[digest]))
    found = ImagesPublic.model_validate_json(checked((yield Call("GET", "/v1/images", {"sha256": digest}))).content)
    image = found.data[0] if found.data else None
    if image is None:
        uploaded = checked((yield Call("POST", "/v1/images", upload=data)))
        image = ImagePublic.model_validate_json(uploaded.content)
    known[digest] = image.id
    return image


def get_image(image_id: UUID) -> Flow[ImagePublic]:
    return ImagePublic.model_validate_json(checked((yield Call("GET", f"/v1/images/{image_id}"))).content)


def submit(request: JobCreateBase, idempotency_key: str | None, wait_s: float = 0.0) -> Flow[JobPublicBase]:
    """Queue the job; with `wait_s`, the server answers once it has finished or after `wait_s` (at most 30 s)."""
    headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    if wait_s > 0:
        headers["Prefer"] = f"wait={min(wait_s, LONG_POLL_S):g}"
    call = Call("POST", "/v1/jobs", json_body=_request_json(request), headers=headers, timeout_s=_timeout_s(wait_s))
    return parse_job_public(checked((yield call)).json())


def run(request: JobCreateBase, idempotency_key: str | None, timeout_s: float | None) -> Flow[JobPublicBase]:
    """Submit the job and return it finished: the submission itself waits (`Prefer: wait`), and a job
    that outlasts it is long-polled; WaitTimedOut after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    job = yield from submit(request, idempotency_key, LONG_POLL_S if timeout_s is None else min(LONG_POLL_S, timeout_s))
    if job.status.is_terminal:
        return job
    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    return (yield from wait(job.id, left))


def submit_many(jobs: Sequence[BatchJob], chunk: int) -> Flow[JobsBatchPublic]:
    """Every job through POST /v1/jobs:batch, `chunk` jobs a request; results in the order of `jobs`."""
    results = JobsBatchPublic(items=[])
    for start in range(0, len(jobs), chunk):
        items = [JobsBatchItem(idempotency_key=j.idempotency_key, job=j.request) for j in jobs[start : start + chunk]]
        body = JobsBatchCreate(jobs=items).model_dump_json(exclude_none=True).encode()
        answer = checked((yield Call("POST", "/v1/jobs:batch", json_body=body)))
        results.items.extend(JobsBatchPublic.model_validate_json(answer.content).items)
    return results


def _request_json(request: JobCreateBase) -> bytes:
    return request.model_dump_json(exclude_none=True).encode()


def get_job(job_id: UUID, wait_s: float = 0.0) -> Flow[JobPublicBase]:
    params: dict[str, str | float] = {"wait": wait_s} if wait_s > 0 else {}
    call = Call("GET", f"/v1/jobs/{job_id}", params, timeout_s=_timeout_s(wait_s))
    return parse_job_public(checked((yield call)).json())


def _timeout_s(wait_s: float) -> float | None:
    """A call that asks the server to wait `wait_s` gets that much longer than the client's own timeout."""
    return wait_s + 30 if wait_s > 0 else None


def wait(job_id: UUID, timeout_s: float | None) -> Flow[JobPublicBase]:
    """The job once it is terminal, long-polling LONG_POLL_S at a time; WaitTimedOut after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        left = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - time.monotonic())
        job = yield from get_job(job_id, max(left, 0.0))
        if job.status.is_terminal:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimedOut(f"job {job_id} still {job.status.value} after {timeout_s:g} s")


def cancel(job_id: UUID) -> Flow[JobPublicBase]:
    return parse_job_public(checked((yield Call("POST", f"/v1/jobs/{job_id}/cancel"))).json())


def list_jobs(limit: int, cursor: str | None) -> Flow[JobsPublic]:
    params: dict[str, str | float] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    page = checked((yield Call("GET", "/v1/jobs", params))).json()
    return JobsPublic(data=[parse_job_public(job) for job in page["data"]], next_cursor=page["next_cursor"])
