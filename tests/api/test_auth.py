"""Every /v1 endpoint needs a valid API key; rate limits per key (429) and queue depth per tenant (503)."""

import re
from collections.abc import Iterator
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.api_keys import revoke_key
from jobs.db import SessionFactory, session_scope
from jobs.embedded import free_port
from jobs.settings import Settings
from tests.support.auth import bearer, new_key
from tests.support.broker import drain
from tests.support.images import png_bytes
from tests.support.waiting import wait_until

# One id for every path parameter: the test ids stay the same from one collection to the next
# (pytest-xdist's workers each collect, and must agree).
_SOME_ID = UUID("5a0e2c3d-7b1f-4c8e-9d2a-6f4b3e1c0a97")


def v1_routes() -> list[tuple[str, str]]:
    """(method, path) of every /v1 operation in the app's OpenAPI schema, path parameters filled in."""
    offline = Settings(_env_file=None, DATABASE_URL="postgresql://x@127.0.0.1/x", REDIS_URL="redis://x")  # type: ignore[call-arg]
    found = []
    for path, operations in create_app(offline).openapi()["paths"].items():
        if path.startswith("/v1"):
            filled = re.sub(r"\{[^}]+\}", str(_SOME_ID), path)
            found += [(method.upper(), filled) for method in sorted(operations)]
    return found


@pytest.fixture
def anonymous(settings: Settings, empty_tables: None) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_there_are_v1_routes_to_check() -> None:
    methods = {method for method, _ in v1_routes()}
    assert len(v1_routes()) >= 7 and {"GET", "POST"} <= methods


@pytest.mark.parametrize(("method", "path"), v1_routes())
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer b2j_wrong", "Basic YWRtaW46YWRtaW4=", "b2j_no_scheme"])
def test_every_v1_route_needs_a_valid_key(anonymous: TestClient, method: str, path: str, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = anonymous.request(method, path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_and_docs_need_no_key(anonymous: TestClient) -> None:
    assert anonymous.get("/healthz").status_code == 200
    schema = anonymous.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_a_revoked_key_stops_working(anonymous: TestClient, sessions: SessionFactory) -> None:
    """Within moments: the API keeps keys it has seen until it hears of their revocation (test_key_cache.py)."""
    key = new_key(sessions)
    assert anonymous.get("/v1/jobs", headers=bearer(key)).status_code == 200
    with session_scope(sessions) as session:
        revoke_key(session, key[:12])
    wait_until(lambda: anonymous.get("/v1/jobs", headers=bearer(key)).status_code == 401, "revoked key refused", 30)


def test_rate_limit_per_key_with_retry_after(settings: Settings, sessions: SessionFactory, empty_tables: None) -> None:
    limited = settings.model_copy(update={"RATE_LIMIT_REQUESTS": 3, "RATE_LIMIT_WINDOW_S": 30.0})
    first, second = new_key(sessions), new_key(sessions)
    with TestClient(create_app(limited)) as client:
        assert [client.get("/v1/jobs", headers=bearer(first)).status_code for _ in range(3)] == [200] * 3
        over = client.get("/v1/jobs", headers=bearer(first))
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(over.headers["Retry-After"]) <= 30
        assert client.get("/v1/jobs", headers=bearer(second)).status_code == 200  # counted per key


def test_rate_limit_lets_requests_through_while_redis_is_unreachable(
    settings: Settings, sessions: SessionFactory, empty_tables: None
) -> None:
    """Reading results must not depend on the broker: the limit is not checked, the request is answered."""
    gone = f"redis://127.0.0.1:{free_port()}/0"
    limited = settings.model_copy(update={"RATE_LIMIT_REQUESTS": 1, "REDIS_URL": gone})
    key = new_key(sessions)
    with TestClient(create_app(limited)) as client:
        assert [client.get("/v1/jobs", headers=bearer(key)).status_code for _ in range(3)] == [200] * 3


def test_queue_depth_per_tenant_with_retry_after(
    settings: Settings, sessions: SessionFactory, empty_tables: None, key_prefix: str
) -> None:
    shallow = settings.model_copy(update={"MAX_UNFINISHED_JOBS_PER_TENANT": 2, "TENANT_QUEUE_FULL_RETRY_AFTER_S": 7})
    busy, other = new_key(sessions, "busy"), new_key(sessions, "calm")
    with TestClient(create_app(shallow)) as client:
        codes = []
        for key in (busy, busy, busy, other):
            image = client.post("/v1/images", files={"file": ("a.png", png_bytes())}, headers=bearer(key)).json()["id"]
            body = {"kind": "caption", "input": {"image_id": image}}
            codes.append(client.post("/v1/jobs", json=body, headers=bearer(key)))
        assert [r.status_code for r in codes] == [202, 202, 503, 202]
        assert codes[2].json()["error"]["code"] == "tenant_queue_full"
        assert codes[2].headers["Retry-After"] == "7"
        # A finished job frees its place.
        client.post(f"/v1/jobs/{codes[0].json()['id']}/cancel", headers=bearer(busy))
        image = client.post("/v1/images", files={"file": ("a.png", png_bytes())}, headers=bearer(busy)).json()["id"]
        again = client.post("/v1/jobs", json={"kind": "caption", "input": {"image_id": image}}, headers=bearer(busy))
        assert again.status_code == 202
    drain(key_prefix, "infer.tiny-opt")
