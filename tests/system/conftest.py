"""Whole-stack fixtures: the API (uvicorn), a worker and Flower as real processes over HTTP.

They live while this package's tests run, and stop after them: left running, the API's sweeper
would re-send other packages' queued jobs and the worker would run them.
"""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from jobs.embedded import free_port
from jobs.settings import Settings
from tests.support.auth import bearer
from tests.support.fixtures import worker_fixture
from tests.support.processes import cli_process, wait_for_http, wait_for_log


@contextmanager
def serving(command: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`blip2-jobs <command> --port P` on a free port; yields its URL once it answers."""
    port = free_port()
    log = tmp_path_factory.mktemp(command) / f"{command}.log"
    with cli_process([command, "--port", str(port)], settings, log) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz" if command == "api" else f"{url}/healthcheck", process)
        yield url


worker = worker_fixture("package")  # every tiny model's queue

# The package's API sweeps every second for jobs queued over two seconds, and retries webhooks fast.
FAST_API = {
    "SWEEP_INTERVAL_S": 1.0,
    "QUEUED_TOO_LONG_S": 2.0,
    "WEBHOOK_INTERVAL_S": 0.2,
    "WEBHOOK_TIMEOUT_S": 2.0,
    "WEBHOOK_RETRY_BASE_S": 0.3,
    "WEBHOOK_RETRY_MAX_S": 1.0,
    "WEBHOOK_MAX_ATTEMPTS": 1000,
}


@pytest.fixture(scope="session")
def api_settings(settings: Settings) -> Settings:
    """The settings of the system tests' API process (FAST_API)."""
    return settings.model_copy(update=FAST_API)


@pytest.fixture(scope="package")
def api_url(api_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API process of this package's tests (api_settings)."""
    with serving("api", api_settings, tmp_path_factory) as url:
        yield url


@pytest.fixture
def http(api_url: str, worker: Path, api_key: str) -> Iterator[httpx.Client]:
    """An HTTP client for the running API, with a worker behind it, sending the test tenant's API key."""
    with httpx.Client(base_url=api_url, timeout=60, headers=bearer(api_key)) as client:
        yield client


@pytest.fixture(scope="package")
def flower_url(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower, with the settings' basic-auth credentials."""
    with serving("flower", settings, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="package")
def long_worker(
    worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker on the `train` and `download` queues, as `blip2-jobs worker --queues train,download`."""
    log = tmp_path_factory.mktemp("long-worker") / "worker.log"
    with cli_process(["worker", "--queues=train,download"], worker_settings, log) as process:
        wait_for_log(log, " ready.", process, timeout_s=120)
        yield process
