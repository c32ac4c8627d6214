"""The embedded default as a fresh clone runs it: no server URLs set, data under a directory of its own."""

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.support.processes import CLI


@contextmanager
def fresh_data_dir() -> Iterator[Path]:
    """A data directory of its own, not yet made, outside pytest's temporary root: as root, pgserver runs
    PostgreSQL as a user of its own and opens the path's folders to it, and each pytest run that starts
    on this machine closes that root to its owner again, which the server then cannot reach."""
    with tempfile.TemporaryDirectory(prefix="blip2-embedded-") as parent:
        yield Path(parent) / "data"


def embedded_env(data_dir: Path) -> dict[str, str]:
    """The environment of a fresh clone: no server URLs, data under `data_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return env | {"BLIP2_DATA_DIR": str(data_dir)}


def blip2_jobs(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`blip2-jobs <args>`, run beside `data_dir` (no .env there), as an operator runs it; it must succeed."""
    done = subprocess.run(
        [*CLI, *args], env=embedded_env(data_dir), cwd=data_dir.parent, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"blip2-jobs {' '.join(args)}: {done.stderr}"
    return done


def postgres_of(data_dir: Path) -> list[int]:
    """PostgreSQL processes running on `data_dir` (the postmaster names it, its children work in it)."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "cwd", "status"]):
        text = " ".join(process.info["cmdline"] or []) + " " + str(process.info["cwd"] or "")
        if process.info["name"] == "postgres" and str(data_dir) in text and process.info["status"] != "zombie":
            found.append(process.info["pid"])
    return found


def said_embedded(done: subprocess.CompletedProcess[str], url: str) -> bool:
    """Whether the command said, in one line on stderr, that it used the embedded database at `url`."""
    return f"database: embedded PostgreSQL, {url} (DATABASE_URL is not set)" in done.stderr.splitlines()
