"""Schemathesis against the API's own OpenAPI schema: generated requests, valid and invalid, never get a
5xx, and every answer (status, content type, body) is one the schema documents.

Each operation gets `MAX_EXAMPLES` generated requests with a valid API key, on real Postgres and Redis;
FUZZ_EXAMPLES=1000 make test runs a deeper search.
"""

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from jobs.db import SessionFactory
from jobs.settings import Settings
from tests.support.auth import bearer, new_key
from tests.support.broker import drain

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


# The schema does not depend on settings, so it is read at import from an app that never connects;
# the requests go to an app on the test session's own database (the `app` fixture).
_OFFLINE = Settings(_env_file=None, DATABASE_URL="postgresql://offline@127.0.0.1/none", REDIS_URL="redis://offline")  # type: ignore[call-arg]
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_OFFLINE))


@pytest.fixture(scope="module")
def app(settings: Settings, key_prefix: str) -> Iterator[FastAPI]:
    yield create_app(settings)
    drain(key_prefix, "infer.tiny-opt")


@pytest.fixture(scope="module")
def fuzz_key(sessions: SessionFactory) -> str:
    """A key of its own: the fuzzing spends its rate limit, not the shared test key's."""
    return new_key(sessions, "fuzz")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case: schemathesis.Case, app: FastAPI, fuzz_key: str) -> None:
    case.call_and_validate(app=app, headers=bearer(fuzz_key), checks=list(CHECKS))
