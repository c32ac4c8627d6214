"""`blip2-jobs tenants set|list` and `blip2-jobs usage`, run as an operator runs them, against the test
session's database."""

import json
import os
import subprocess

import pytest
from sqlalchemy import select

from jobs.db import SessionFactory, session_scope
from jobs.kinds import JobKind
from jobs.models import Tenant
from jobs.repository import add_job, claim_job, succeed_job
from jobs.settings import Settings
from tests.cli.test_key_commands import EXE

TENANT = "cli-usage"


def cli(settings: Settings, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DATABASE_URL": database_url or str(settings.DATABASE_URL)}
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=60)


def test_set_and_list_weights(settings: Settings, sessions: SessionFactory) -> None:
    assert cli(settings, "tenants", "set", "cli-weighted", "--weight", "3").returncode == 0
    done = cli(settings, "tenants", "set", "cli-weighted", "--weight", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "tenant cli-weighted: weight 2"), done.stderr
    with sessions() as session:
        assert session.scalar(select(Tenant.weight).where(Tenant.name == "cli-weighted")) == 2
    listed = cli(settings, "tenants", "list")
    assert "cli-weighted\t2" in listed.stdout.splitlines()


@pytest.fixture(scope="module")
def finished_job(sessions: SessionFactory) -> None:
    """One caption job of TENANT that took 2.5 worker-seconds on tiny-opt."""
    with session_scope(sessions) as session:
        job = add_job(session, tenant=TENANT, kind=JobKind.CAPTION, model="tiny-opt", queue="infer.cli-usage", input={})
    with session_scope(sessions) as session:
        run = claim_job(session, job.id)
        assert run is not None
        succeed_job(session, run.attempt, {"captions": ["x"]}, 2.5)


@pytest.mark.usefixtures("finished_job")
def test_usage_prints_what_the_api_answers(settings: Settings) -> None:
    text = cli(settings, "usage", "--tenant", TENANT)
    assert text.returncode == 0, text.stderr
    assert "  caption\tsucceeded\t1" in text.stdout.splitlines()
    assert "  tiny-opt\t2.500\t1 jobs" in text.stdout.splitlines()
    as_json = cli(settings, "usage", "--tenant", TENANT, "--json", "--from", "2000-01-01")
    document = json.loads(as_json.stdout)
    assert document["models"] == [{"model": "tiny-opt", "worker_seconds": 2.5, "jobs": 1}]
    assert document["from"] == "2000-01-01T00:00:00Z"
    before = json.loads(cli(settings, "usage", "--tenant", TENANT, "--json", "--to", "2000-01-01").stdout)
    assert before["jobs"] == [] and before["worker_seconds"] == 0.0


def test_errors_are_one_line_and_exit_2(settings: Settings) -> None:
    for args, expected in [
        (["usage", "--tenant", "Bad/Name"], "tenant 'Bad/Name'"),
        (["usage", "--tenant", TENANT, "--from", "yesterday"], "--from 'yesterday'"),
        (["usage", "--tenant", TENANT, "--from", "2026-02-01", "--to", "2026-01-01"], "before it starts"),
        (["tenants", "set", "Bad/Name", "--weight", "2"], "tenant 'Bad/Name'"),
    ]:
        done = cli(settings, *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
    unreachable = cli(settings, "usage", "--tenant", TENANT, database_url="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 2 and unreachable.stderr.startswith("error: database:"), unreachable.stderr
    refused = cli(settings, "tenants", "set", "acme", "--weight", "0")
    assert refused.returncode == 2 and "weight" in refused.stderr.lower()
