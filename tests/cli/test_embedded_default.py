"""The database-only commands on the embedded default: with DATABASE_URL unset, `migrate`, `keys`,
`tenants` and `usage` use the embedded PostgreSQL under BLIP2_DATA_DIR, the one `blip2-jobs up` runs.

Nothing running: the command starts that server and stops it when it ends. A server another process
holds (`up`): the command uses it and leaves it running.
"""

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from jobs.api_keys import authenticate
from jobs.db import create_db_engine, create_session_factory
from jobs.embedded import free_port
from jobs.settings import Settings
from tests.support.auth import bearer
from tests.support.processes import CLI, stop, wait_for_http, wait_for_log
from tests.support.waiting import wait_until

# What `up` does for the database, in a process of its own: holds the embedded server until stdin closes.
HOLDER = """
import sys
from jobs.embedded import database_for
from jobs.settings import Settings

with database_for(Settings()) as settings:
    print(settings.DATABASE_URL, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def data() -> Iterator[Path]:
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
    """`blip2-jobs <args>`, run beside `data_dir` (no .env there), as an operator runs it."""
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


def key_works(database_url: str, secret: str, tenant: str) -> bool:
    """Whether `secret` authenticates as `tenant` on the database at `database_url` (a query through it)."""
    engine = create_db_engine(Settings(_env_file=None, DATABASE_URL=database_url))  # type: ignore[call-arg]
    try:
        with create_session_factory(engine)() as session:
            principal = authenticate(session, secret)
    finally:
        engine.dispose()
    return principal is not None and principal.tenant == tenant


def test_with_nothing_running_each_command_starts_and_stops_the_embedded_database(data: Path) -> None:
    url = f"postgresql://postgres:@/postgres?host={data / 'postgres'}"
    commands = [
        ["migrate"],
        ["keys", "create", "--tenant", "acme"],
        ["tenants", "set", "acme", "--weight", "2"],
        ["tenants", "list"],
        ["usage", "--tenant", "acme"],
    ]
    out = {}
    for args in commands:
        command = " ".join(args)
        ran = blip2_jobs(data, *args)
        assert said_embedded(ran, url), f"`{command}` did not name the embedded database: {ran.stderr}"
        wait_until(lambda: not postgres_of(data), f"the PostgreSQL `{command}` started to stop after it")
        out[command] = ran.stdout
    assert out["tenants list"].splitlines() == ["tenant\tweight", "acme\t2"], "the weight set was not kept"
    assert out["usage --tenant acme"].startswith("tenant acme,"), out["usage --tenant acme"]


@contextmanager
def holding_embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Another process holding the embedded PostgreSQL of `data_dir`, as `up` does; yields its URL."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        env=embedded_env(data_dir),
        cwd=data_dir.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        url = holder.stdout.readline().decode().strip()  # empty if the holder died: the URL check below then fails
        assert url.startswith("postgresql://"), f"the holder printed no URL (exit {holder.poll()})"
        yield url
    finally:
        holder.stdin.close()  # it leaves (a SIGTERM would kill it before it stops its server)
        try:
            holder.wait(timeout=60)
        finally:
            stop(holder)  # only if it hung


def test_commands_use_the_server_another_process_holds_and_leave_it_running(data: Path) -> None:
    with holding_embedded_postgres(data) as url:
        server = postgres_of(data)
        blip2_jobs(data, "migrate")
        created = blip2_jobs(data, "keys", "create", "--tenant", "acme")
        listed = blip2_jobs(data, "keys", "list")
        assert said_embedded(created, url) and said_embedded(listed, url), created.stderr + listed.stderr
        assert postgres_of(data) == server, "a command stopped or replaced the server another process holds"
        assert key_works(url, created.stdout.strip(), "acme"), "the holder's server does not answer with the new key"
        assert "\tacme\t" in listed.stdout
    wait_until(lambda: not postgres_of(data), "the server to stop when its last user, the holder, leaves")


@pytest.mark.slow
def test_keys_made_beside_a_running_up_work_on_its_api(data: Path, models_dir: Path, tmp_path: Path) -> None:
    """`up` prints the embedded URLs; `keys create` uses its database, and `up`'s API takes the key."""
    data.mkdir()
    for entry in models_dir.iterdir():  # the built tiny checkpoints, for the worker
        (data / entry.name).symlink_to(entry)
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", f"--port={port}", f"--flower-port={free_port()}", "--models=tiny-opt"],
            env=embedded_env(data),
            cwd=data.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_log(log, "API key", up, timeout_s=300)
        banner = log.read_text()
        url = re.search(r"^Postgres\s+(postgresql://\S+)\s+\(embedded", banner, re.MULTILINE)
        assert url and url.group(1) == f"postgresql://postgres:@/postgres?host={data / 'postgres'}", banner
        assert re.search(r"^Redis\s+redis://127\.0\.0\.1:\d+/0\s+\(embedded", banner, re.MULTILINE), banner
        server = postgres_of(data)

        created = blip2_jobs(data, "keys", "create", "--tenant", "acme")
        assert said_embedded(created, url.group(1)), created.stderr
        assert postgres_of(data) == server, "`keys create` stopped or replaced the server `up` runs"
        api = f"http://127.0.0.1:{port}"
        wait_for_http(f"{api}/healthz", up, timeout_s=300)
        answer = httpx.get(f"{api}/v1/usage", headers=bearer(created.stdout.strip()), timeout=30)
        assert answer.status_code == 200 and answer.json()["tenant"] == "acme", answer.text
    finally:
        stop(up, timeout_s=60)
    assert up.returncode == 0, log.read_text()[-3000:]
    wait_until(lambda: not postgres_of(data), "the embedded PostgreSQL to stop with `up`")


def test_an_embedded_server_that_cannot_start_says_so_in_one_line(tmp_path: Path) -> None:
    """A data directory that cannot be made (here under a file): `up` and a database command say which
    server did not start, why and what to set instead, in one line on stderr, and exit 2."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    data = blocker / "data"
    for args in (["keys", "list"], ["up", f"--port={free_port()}", f"--flower-port={free_port()}"]):
        done = subprocess.run(
            [*CLI, *args], env=embedded_env(data), cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        command = " ".join(args)
        assert done.returncode == 2, f"`{command}` exited {done.returncode}: {done.stderr}"
        assert done.stderr.splitlines() == [
            f"error: the embedded PostgreSQL did not start in {data / 'postgres'} (NotADirectoryError: "
            f"[Errno 20] Not a directory: '{data / 'postgres'}'); set DATABASE_URL to a server of your own"
        ], f"`{command}`: {done.stderr}"
