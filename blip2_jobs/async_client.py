"""The asynchronous client: the same flows as `Client`, over an `httpx.AsyncClient`."""

import asyncio
from collections.abc import Sequence
from typing import Self, TypeVar
from uuid import UUID

import httpx

from blip2_jobs import _protocol as protocol
from blip2_jobs._protocol import DEFAULT_BATCH_CHUNK, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, BatchJob, Call, Flow
from jobs.schemas import ImagePublic, JobCreateBase, JobPublicBase, JobsBatchPublic, JobsPublic

T = TypeVar("T")


class AsyncClient:
    """blip2-jobs over HTTP for one API key, for asyncio code; use it as an async context manager."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(transport=transport, **protocol.http_options(base_url, api_key, timeout_s))
        self.max_retries = max_retries
        self._known_images: dict[str, UUID] = {}  # sha256 -> id, so a file seen once is never checked again

    async def upload_image(self, data: bytes) -> ImagePublic:
        """The image with these bytes, uploaded only if the tenant does not have it already."""
        return await self._run(protocol.upload_image(data, self._known_images))

    async def get_image(self, image_id: UUID) -> ImagePublic:
        return await self._run(protocol.get_image(image_id))

    async def submit(self, request: JobCreateBase, idempotency_key: str | None = None) -> JobPublicBase:
        """Queue a job; the same Idempotency-Key again returns the first job instead of making another."""
        return await self._run(protocol.submit(request, idempotency_key))

    async def run(
        self, request: JobCreateBase, idempotency_key: str | None = None, timeout_s: float | None = None
    ) -> JobPublicBase:
        """Submit a job and return it once it has finished, in one request when it finishes within 30 s
        (`Prefer: wait`), long-polling after that; WaitTimedOut after `timeout_s`, if given."""
        return await self._run(protocol.run(request, idempotency_key, timeout_s))

    async def submit_many(self, jobs: Sequence[BatchJob], chunk: int = DEFAULT_BATCH_CHUNK) -> JobsBatchPublic:
        """Queue many jobs through the batch endpoint; one result (job or error) per job, in order."""
        return await self._run(protocol.submit_many(jobs, chunk))

    async def get(self, job_id: UUID, wait_s: float = 0.0) -> JobPublicBase:
        """A job; with `wait_s`, as soon as it is terminal or when the wait is over (at most 30 s)."""
        return await self._run(protocol.get_job(job_id, wait_s))

    async def wait(self, job_id: UUID, timeout_s: float | None = None) -> JobPublicBase:
        """The job once it has finished (long-polling); WaitTimedOut after `timeout_s`, if given."""
        return await self._run(protocol.wait(job_id, timeout_s))

    async def cancel(self, job_id: UUID) -> JobPublicBase:
        return await self._run(protocol.cancel(job_id))

    async def list_jobs(self, limit: int = 20, cursor: str | None = None) -> JobsPublic:
        return await self._run(protocol.list_jobs(limit, cursor))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
        except StopIteration as done:  # nothing to send (submit_many of no jobs)
            return done.value  # type: ignore[no-any-return]
        while True:
            response = await self._send(call)
            try:
                call = flow.send(response)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.send(call.build(self._http))
            delay = protocol.retry_delay(response, attempt, self.max_retries)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1
