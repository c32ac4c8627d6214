"""Fixtures for API tests: the real app over a real, migrated Postgres and Redis, driven through HTTP."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.settings import Settings
from tests.support.auth import bearer


@pytest.fixture
def client(settings: Settings, empty_tables: None, api_key: str) -> Iterator[TestClient]:
    """An HTTP client for the app, on empty tables, sending the test tenant's API key."""
    with TestClient(create_app(settings), headers=bearer(api_key)) as test_client:
        yield test_client


@pytest.fixture
def other(settings: Settings, other_api_key: str, client: TestClient) -> Iterator[TestClient]:
    """A client of the second tenant, on the same (emptied) tables as `client`."""
    with TestClient(create_app(settings), headers=bearer(other_api_key)) as other_client:
        yield other_client
