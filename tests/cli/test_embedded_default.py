"""The database-only commands on the embedded default: with DATABASE_URL unset, `migrate`, `keys`,
`tenants` and `usage` use the embedded PostgreSQL under BLIP2_DATA_DIR, the one `blip2-jobs up` runs.

Nothing running: the command starts that server and stops it when it ends. A server another process
holds (`up`): the command uses it and leaves it running (tests/system/test_up.py runs a real `up`).
"""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs.api_keys import authenticate
from jobs.db import create_db_engine, create_session_factory
from jobs.embedded import free_port
from jobs.settings import Settings
from tests.support.embedded import blip2_jobs, embedded_env, fresh_data_dir, postgres_of, said_embedded
from tests.support.processes import CLI, stop
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
    with fresh_data_dir() as path:
        yield path


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
