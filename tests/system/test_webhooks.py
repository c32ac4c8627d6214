"""Webhooks over real HTTP: the session's API process delivers, a real worker finishes the jobs, and a
receiver in the test (a real HTTP server on 127.0.0.1, allowed by FETCH_ALLOWED_HOSTS) answers.

The signature is checked here with the algorithm the README documents, written out again, not with
the service's own code.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from jobs.embedded import free_port
from jobs.settings import Settings
from tests.support.auth import TENANT
from tests.support.images import png_bytes
from tests.support.jobs import run_job
from tests.support.processes import CLI
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import Receiver, receiving_webhooks


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The README's receiver check: HMAC-SHA256 over "<id>.<timestamp>.<body>", keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, offered) for offered in headers["webhook-signature"].split())


def tenants_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DATABASE_URL": str(settings.DATABASE_URL), "FETCH_ALLOWED_HOSTS": "127.0.0.1"}
    return subprocess.run([*CLI, "tenants", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def secret(settings: Settings) -> str:
    """The test tenant's signing secret, as the operator reads it."""
    shown = tenants_cli(settings, "webhook-secret", TENANT)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("whsec_") and shown.stdout.count("\n") == 1
    return shown.stdout.strip()


@pytest.fixture
def image_id(http: httpx.Client) -> str:
    files = {"file": ("x.png", png_bytes(color=(10, 200, 10)))}
    return str(http.post("/v1/images", files=files).json()["id"])


def caption(image_id: str, webhook_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "caption", "input": {"image_id": image_id, "max_new_tokens": 3}}
    return body | ({"webhook_url": webhook_url} if webhook_url else {})


def webhook_of(http: httpx.Client, job_id: str) -> dict[str, Any]:
    webhook: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()["webhook"]
    return webhook


def wait_delivered(http: httpx.Client, job_id: str) -> dict[str, Any]:
    wait_until(lambda: webhook_of(http, job_id)["status"] == "delivered", f"job {job_id}'s webhook delivered")
    return webhook_of(http, job_id)


def check_delivery(receiver: Receiver, job: dict[str, Any], secret: str) -> None:
    """Each request the receiver got is the finished job's JSON, signed with the tenant's secret."""
    for received in receiver.snapshot():
        assert verify(secret, received.headers, received.body), "the signature does not verify"
        sent = json.loads(received.body)
        assert sent == {k: v for k, v in job.items() if k != "webhook"}, "the body is not the job's public JSON"


def test_a_receiver_that_is_down_gets_the_job_once_it_is_up(http: httpx.Client, image_id: str, secret: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    job = run_job(http, caption(image_id, url))
    assert job["status"] == "succeeded" and job["webhook"]["url"] == url
    wait_until(lambda: webhook_of(http, job["id"])["attempts"] >= 2, "two failed attempts while the receiver is down")
    failing = webhook_of(http, job["id"])
    assert failing["status"] == "pending" and failing["last_status"] is None and failing["last_error"]
    assert failing["next_attempt_at"] is not None
    with receiving_webhooks(port) as receiver:
        delivered = wait_delivered(http, job["id"])
        assert len(receiver.received) == 1, "delivered once, when the receiver came up"
        # `attempts` counts an attempt when it is claimed, so the second may still have been on its way
        # when the receiver came up: delivered on it or on a later one, never before it.
        assert delivered["last_status"] == 204 and delivered["delivered_at"]
        assert delivered["attempts"] >= failing["attempts"] >= 2
        assert delivered["next_attempt_at"] is None
        check_delivery(receiver, http.get(f"/v1/jobs/{job['id']}").json(), secret)


def test_a_slow_receiver_is_retried_and_not_sent_again_once_it_acknowledged(
    http: httpx.Client, image_id: str, secret: str
) -> None:
    with receiving_webhooks(hold_first=True) as receiver:
        job = run_job(http, caption(image_id, receiver.url()))
        delivered = wait_delivered(http, job["id"])
        receiver.release()  # the first request is answered now, long after its sender timed out
        assert delivered["attempts"] == 2 and delivered["last_status"] == 204
        first_id = receiver.ids()[0]
        assert receiver.ids() == [first_id, first_id], "the retry carries the first attempt's webhook-id"
        # Another job delivered to the same receiver: the deliverer has run since, and sent the first no more.
        later = run_job(http, caption(image_id, receiver.url("/later")))
        wait_delivered(http, later["id"])
        assert receiver.ids().count(first_id) == 2, "an acknowledged delivery was sent again"
        assert webhook_of(http, job["id"])["attempts"] == 2
        assert all(verify(secret, r.headers, r.body) for r in receiver.snapshot())


def test_a_forged_or_tampered_delivery_fails_verification(http: httpx.Client, image_id: str, secret: str) -> None:
    with receiving_webhooks() as receiver:
        job = run_job(http, caption(image_id, receiver.url()))
        wait_delivered(http, job["id"])
        [received] = receiver.snapshot()
    assert verify(secret, received.headers, received.body)
    tampered = received.body.replace(b'"succeeded"', b'"failed"')
    assert tampered != received.body and not verify(secret, received.headers, tampered)
    assert not verify("whsec_" + base64.b64encode(b"k" * 32).decode(), received.headers, received.body)
    replayed_later = received.headers | {"webhook-timestamp": str(int(received.headers["webhook-timestamp"]) + 60)}
    assert not verify(secret, replayed_later, received.body), "the timestamp is part of what is signed"


def test_a_canceled_job_is_delivered_too(http: httpx.Client, secret: str) -> None:
    """The outbox row comes from the jobs table's trigger, so every way a job ends enqueues it: here a
    cancel, of a job on a hub model no worker serves (so it is still queued)."""
    with receiving_webhooks() as receiver:
        body = {"kind": "embed", "model": "nobody/serves-this", "input": {"mode": "text", "text": "a cat"}}
        created = http.post("/v1/jobs", json=body | {"webhook_url": receiver.url()}).json()
        canceled = http.post(f"/v1/jobs/{created['id']}/cancel").json()
        assert canceled["status"] == "canceled"
        wait_delivered(http, canceled["id"])
        check_delivery(receiver, http.get(f"/v1/jobs/{canceled['id']}").json(), secret)
        assert len(receiver.received) == 1


@contextmanager
def default_webhook(settings: Settings, url: str) -> Iterator[None]:
    """The test tenant's default webhook is `url` inside the block, and none after it."""
    done = tenants_cli(settings, "webhook", TENANT, url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("whsec_")
    try:
        yield
    finally:
        cleared = tenants_cli(settings, "webhook", TENANT, "--clear")
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout == "", "a cleared webhook printed a secret"


def test_the_tenant_default_webhook(http: httpx.Client, image_id: str, settings: Settings) -> None:
    with receiving_webhooks() as receiver, default_webhook(settings, receiver.url("/default")):
        job = run_job(http, caption(image_id))
        assert job["webhook"]["url"] == receiver.url("/default")
        wait_delivered(http, job["id"])
        assert [r.path for r in receiver.snapshot()] == ["/default"]
        own = run_job(http, caption(image_id, receiver.url("/own")))
        wait_delivered(http, own["id"])
        assert [r.path for r in receiver.snapshot()] == ["/default", "/own"], "a job's own URL wins"
    assert run_job(http, caption(image_id))["webhook"] is None, "cleared: no default any more"


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://localhost:9/x"])
def test_a_private_address_is_refused_at_submission(http: httpx.Client, image_id: str, url: str) -> None:
    before = http.get("/v1/jobs", params={"limit": 1}).json()["data"]
    response = http.post("/v1/jobs", json=caption(image_id, url))
    assert response.status_code == 422, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == ("forbidden_url", "webhook_url")
    assert http.get("/v1/jobs", params={"limit": 1}).json()["data"] == before, "a refused request made a job"


def test_the_operator_cannot_set_a_private_default(settings: Settings) -> None:
    done = tenants_cli(settings, "webhook", TENANT, "http://192.168.1.1/hook")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "not a public address" in done.stderr
