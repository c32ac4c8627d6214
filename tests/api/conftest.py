"""Fixtures for API tests: the real app over a real, migrated Postgres and Redis, driven through HTTP."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.settings import Settings


@pytest.fixture
def client(settings: Settings, empty_tables: None) -> Iterator[TestClient]:
    """An HTTP client for the app, on empty tables."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client
