"""`blip2-jobs keys create|list|revoke`, run as an operator runs them, against the test session's database."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.api_keys import authenticate
from jobs.db import SessionFactory
from jobs.settings import Settings

EXE = shutil.which("blip2-jobs", path=str(Path(sys.executable).parent)) or "blip2-jobs"


def keys(settings: Settings, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DATABASE_URL": database_url or str(settings.DATABASE_URL)}
    return subprocess.run([EXE, "keys", *args], capture_output=True, text=True, env=env, timeout=60)


def test_create_list_revoke(settings: Settings, sessions: SessionFactory) -> None:
    created = keys(settings, "create", "--tenant", "cli-tenant", "--name", "from the cli")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("b2j_") and "\n" not in secret  # the key alone on stdout, for scripts
    with sessions() as session:
        principal = authenticate(session, secret)
    assert principal is not None and principal.tenant == "cli-tenant"

    listed = keys(settings, "list", "--tenant", "cli-tenant")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.strip().splitlines()[1:]]
    assert len(rows) == 1 and rows[0][1:4] == ["cli-tenant", secret[:12], "from the cli"] and rows[0][5] == "-"
    assert secret not in listed.stdout

    revoked = keys(settings, "revoke", rows[0][2])
    assert revoked.returncode == 0, revoked.stderr
    with sessions() as session:
        assert authenticate(session, secret) is None
    assert keys(settings, "list", "--tenant", "cli-tenant").stdout.strip().splitlines()[1].split("\t")[5] != "-"


def test_errors_are_one_line_and_nonzero(settings: Settings) -> None:
    for args, expected in [
        (["create", "--tenant", "Bad/Name"], "tenant 'Bad/Name'"),
        (["revoke", "b2j_nosuchkey"], "no key 'b2j_nosuchkey'"),
    ]:
        done = keys(settings, *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and expected in done.stderr
    unreachable = keys(settings, "list", database_url="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 2 and unreachable.stderr.startswith("error: database:"), unreachable.stderr
    assert unreachable.stderr.count("\n") == 1
