"""The directory where processes that share their Prometheus metrics write them (multiprocess mode).

A worker's counters change in its prefork child and an API started with `--workers N` runs N
processes, while one HTTP endpoint answers for all of them. prometheus-client's multiprocess mode
does this through files in PROMETHEUS_MULTIPROC_DIR, which it reads once, when it is first imported,
so the directory must be set before anything imports it. This module imports nothing of it.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsImportedTooEarly(RuntimeError):
    """prometheus_client was imported before the shared directory was set: metrics would stay per process."""


@contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """A fresh directory for this process and its children's metrics, removed afterwards.

    Fresh, because files left by an earlier run would be counted again; the children inherit it
    through the environment (prefork children by fork, uvicorn's workers by spawn).
    """
    if "prometheus_client" in sys.modules:
        raise MetricsImportedTooEarly(f"set {MULTIPROC_DIR} before prometheus_client is imported")
    directory = Path(tempfile.mkdtemp(prefix="blip2-metrics-"))
    os.environ[MULTIPROC_DIR] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def metrics_are_shared() -> bool:
    """Whether this process records into a shared directory (its parent set one up)."""
    return bool(os.environ.get(MULTIPROC_DIR))
