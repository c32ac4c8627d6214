"""The download and fetch tests' local HTTP file server (tests/support/file_server.py)."""

from collections.abc import Iterator

import pytest

from tests.support.file_server import FileServer, serving_files


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    with serving_files() as server:
        yield server
