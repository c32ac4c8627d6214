"""Driving jobs over real HTTP: submit, then long-poll to the end."""

from typing import Any
from uuid import UUID

import httpx

from jobs.db import SessionFactory, session_scope
from jobs.models import Image
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
