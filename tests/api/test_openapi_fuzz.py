"""Schemathesis against the API's own OpenAPI schema: generated requests, valid and invalid, never get a
5xx, every answer (status, content type, body) is one the schema documents, and a request the schema
calls valid is never refused as malformed; then sequences of requests that follow the schema's links
(upload an image, read it, find it by hash, caption it, read and cancel the job).

Each operation gets `MAX_EXAMPLES` generated requests with a valid API key, on real Postgres and Redis;
FUZZ_EXAMPLES=1000 make test runs a deeper search.

What "valid" may still be refused for: the schema says what a request looks like, not what exists. A
well-formed request may name an image, model or dataset that is not there, a URL that cannot be
fetched, bytes that are not an image, or decoding options that break a rule across fields which JSON
Schema cannot state (min_new_tokens <= max_new_tokens): those are 413/415/422 with their own codes.
What it may never get is `invalid_request`, the code of a request the schema itself refuses.
"""

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig
from sqlalchemy import Engine

from api.main import create_app
from jobs.db import SessionFactory
from jobs.settings import Settings
from tests.support.auth import bearer, new_key
from tests.support.broker import drain
from tests.support.fixtures import empty_job_tables
from tests.support.images import png_bytes

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
STATEFUL_EXAMPLES = max(MAX_EXAMPLES // 4, 5)
# Well-formed requests may still be refused for what they name (see the module docstring).
POSITIVE_STATUSES = ["2xx", "401", "404", "409", "413", "415", "422", "429"]
MALFORMED = "invalid_request"


@schemathesis.check
def well_formed_is_not_malformed(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A request generated from the schema as valid must not be refused as `invalid_request`."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:
        return None
    error = response.json().get("error", {})
    if error.get("code") == MALFORMED:
        raise AssertionError(f"a request the schema calls valid was refused: {error}")
    return None


CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    well_formed_is_not_malformed,
)
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}}}
)

# The schema does not depend on settings, so it is read at import from an app that never connects;
# the requests go to an app on the test session's own database (the `app` fixture).
_OFFLINE = Settings(
    _env_file=None,
    DATABASE_URL="postgresql://offline@127.0.0.1/none",
    REDIS_URL="redis://offline",
    SWEEP_INTERVAL_S=0,  # it never connects: no background loops that would try
    WEBHOOK_INTERVAL_S=0,
)  # type: ignore[call-arg]
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_OFFLINE), config=CONFIG)


@schema.hook
def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Uploads are random bytes or real images, so that images exist for the links to lead from."""
    if context.operation is None or context.operation.label != "POST /v1/images":
        return strategy
    colors = st.tuples(*[st.integers(0, 255)] * 3)
    images = st.builds(lambda color, width: {"file": png_bytes(width=width, color=color)}, colors, st.integers(1, 48))
    return strategy | images


# A job's event stream stays open until the job ends, and no worker runs here: the stateful phase
# leaves it out (the stateless one only ever asks for jobs that do not exist, answered 404 at once).
stateful_schema = schema.exclude(operation_id="job_events")


@pytest.fixture(scope="module")
def app(settings: Settings, key_prefix: str) -> Iterator[FastAPI]:
    # No long-polls: a generated ?wait=30 on a queued job would only make the run slow. No rate limit:
    # hundreds of generated requests would spend it, and the stateful phase would see nothing but 429s.
    yield create_app(settings.model_copy(update={"LONG_POLL_MAX_S": 0, "RATE_LIMIT_REQUESTS": 0}))
    drain(key_prefix, "infer.tiny-opt")


@pytest.fixture(scope="module")
def fuzz_key(sessions: SessionFactory) -> str:
    """A key of its own: the fuzzing spends its rate limit, not the shared test key's."""
    return new_key(sessions, "fuzz")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case: schemathesis.Case, app: FastAPI, fuzz_key: str) -> None:
    case.call_and_validate(app=app, headers=bearer(fuzz_key), checks=list(CHECKS))


def test_sequences_that_follow_the_links(app: FastAPI, fuzz_key: str, engine: Engine) -> None:
    """Upload -> read/find/caption -> read/cancel the job, as the links say, with every check on each answer."""
    answered: set[tuple[str, int]] = set()

    class Workflow(stateful_schema.as_state_machine()):  # type: ignore[misc]
        def teardown(self) -> None:
            # Each sequence starts from empty tables: Hypothesis replays a sequence's draws and insists
            # they go the same way, which they do not if an earlier sequence left the same upload
            # behind (200 "already there" instead of 201, so other links to follow).
            empty_job_tables(engine)

        def before_call(self, case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **bearer(fuzz_key)}  # over a generated Authorization

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"app": app, "headers": bearer(fuzz_key)}

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            answered.add((case.operation.label, response.status_code))

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=list(CHECKS), transport_kwargs=kwargs)

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
            stateful_step_count=10, derandomize=True,  # the same sequences every run, each from empty tables
        )
    )  # fmt: skip
    # Only a link makes these: an uploaded image read back, and a job made from an uploaded image's id.
    assert ("GET /v1/images/{image_id}", 200) in answered, "no link from an upload was followed"
    assert ("POST /v1/jobs", 202) in answered, "no job was made from an uploaded image"
