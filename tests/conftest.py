"""Fixtures every test package shares: the network cut off, tiny checkpoints, real photographs,
and the job system's real Postgres, Redis and worker processes.

The tiny BLIP-2 checkpoints are built once per test session into a temporary data
directory (`tiny_data_dir`), exactly as `load_model` builds them on first use.
"""

# Model fixtures first: importing them cuts off the hub before anything loads transformers.
from tests.support.model_fixtures import *  # noqa: F403, I001

# Database, Redis and worker fixtures for the job-system tests (tests/jobs, api, worker, system).
from tests.support.fixtures import *  # noqa: F403

# A headless Chromium for the tests that look at pages (Flower, the API docs).
from tests.support.browser import browser  # noqa: F401

import pytest

from tests.support.fault_tally import tally


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures (tests/support/fault_tally.py), when fault tests ran."""
    summary = tally.summary()
    if summary is not None:
        terminalreporter.write_line(summary)
