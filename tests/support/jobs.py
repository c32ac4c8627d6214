"""Driving jobs over real HTTP: submit, then long-poll to the end."""

from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import select

from jobs.db import SessionFactory, session_scope
from jobs.image_store import store_image
from jobs.models import Image, Job
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.submission import Submission
from tests.support.images import png_bytes

TERMINAL = ("succeeded", "failed", "canceled")


def wait_for_job(http: httpx.Client, location: str, polls: int = 20) -> dict[str, Any]:
    """Long-poll the job at `location` until it is terminal."""
    for _ in range(polls):
        job: dict[str, Any] = http.get(location, params={"wait": 30}).json()
        if job["status"] in TERMINAL:
            return job
    raise AssertionError(f"job still {job['status']}: {job}")


def submit(http: httpx.Client, body: dict[str, Any]) -> str:
    """Submit a job (202 expected); its id."""
    created = http.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def run_job(http: httpx.Client, body: dict[str, Any], polls: int = 20) -> dict[str, Any]:
    """Submit a job and long-poll it to its end."""
    return wait_for_job(http, f"/v1/jobs/{submit(http, body)}", polls)


def upload(http: httpx.Client, color: tuple[int, int, int]) -> str:
    """Upload a solid-colour PNG (201 expected); its image id."""
    response = http.post("/v1/images", files={"file": ("x.png", png_bytes(color=color))})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def damage(sessions: SessionFactory, image_id: str) -> None:
    """Cut the stored bytes of an image short, after the upload checked them: its job fails `invalid_image`."""
    with session_scope(sessions) as session:
        image = session.get_one(Image, UUID(image_id))
        image.data = image.data[:40]


def stored_image(ctx: Submission, tenant: str) -> UUID:
    """An image of `tenant`'s, stored as an upload is, without HTTP."""
    with session_scope(ctx.sessions) as session:
        return store_image(session, tenant, png_bytes(), ctx.settings).id


def caption_of(image_id: UUID | str, **overrides: object) -> JobCreateBase:
    """A caption request for a stored image, as the API validates it."""
    body = {"kind": "caption", "input": {"image_id": str(image_id)}} | overrides
    return JOB_CREATE_ADAPTER.validate_python(body)  # type: ignore[no-any-return]


def jobs_of(sessions: SessionFactory, tenant: str) -> list[Job]:
    """The tenant's job rows as they are now."""
    with session_scope(sessions) as session:
        return list(session.scalars(select(Job).where(Job.tenant == tenant)))
