"""`blip2-jobs up` on a fresh machine: embedded Postgres and Redis, API, worker, Flower; an operator's
command beside it on the same database; all stopped on SIGTERM."""

import re
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from jobs.embedded import free_port
from tests.support.auth import bearer
from tests.support.embedded import blip2_jobs, embedded_env, fresh_data_dir, postgres_of, said_embedded
from tests.support.images import png_bytes
from tests.support.jobs import run_job
from tests.support.processes import CLI, stop, wait_for_log
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_up_runs_everything_and_stops_everything(tmp_path: Path, models_dir: Path) -> None:
    port, flower_port = free_port(), free_port()
    with fresh_data_dir() as data:
        data.mkdir()
        for entry in models_dir.iterdir():  # the built tiny checkpoints, for the worker
            (data / entry.name).symlink_to(entry)
        # As in a container or a root shell: no XDG_RUNTIME_DIR either.
        env = {k: v for k, v in embedded_env(data).items() if k != "XDG_RUNTIME_DIR"}
        log = tmp_path / "up.log"
        with log.open("wb") as out:
            up = subprocess.Popen(
                [*CLI, "up", f"--port={port}", f"--flower-port={flower_port}"],
                env=env,
                cwd=data.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # Said once the API answers, so a request sent on seeing it is never refused.
            wait_for_log(log, f"ready: the API answers at http://127.0.0.1:{port}", up, timeout_s=600)
            api = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{api}/readyz", timeout=30).status_code == 200  # a loaded machine answers slowly
            banner = log.read_text()
            key = development_key_in(banner)
            before_banner = banner.partition("API key")[0]
            assert "Warning" not in before_banner, f"the first thing a user sees is a warning: {before_banner}"
            assert (data / "dev-api-key").read_text().strip() == key
            database = embedded_url("Postgres", r"postgresql://\S+", banner)
            assert database == f"postgresql://postgres:@/postgres?host={data / 'postgres'}", banner
            embedded_url("Redis", r"redis://127\.0\.0\.1:\d+/0", banner)
            assert httpx.post(f"{api}/v1/images", files={"file": ("x.png", png_bytes())}).status_code == 401
            with httpx.Client(base_url=api, timeout=60, headers=bearer(key)) as http:
                image = http.post("/v1/images", files={"file": ("x.png", png_bytes())}).json()["id"]
                caption = {"kind": "caption", "input": {"image_id": image, "decoding": {"max_new_tokens": 3}}}
                assert run_job(http, caption, polls=6)["status"] == "succeeded"
                # The one worker `up` starts serves every tiny model, so every kind works out of the box.
                match = {"kind": "match", "model": "tiny-itm", "input": {"image_id": image, "texts": ["a", "b"]}}
                assert run_job(http, match, polls=6)["status"] == "succeeded"
            assert httpx.get(f"http://127.0.0.1:{flower_port}/").status_code == 401

            # An operator's command beside it uses its database (DATABASE_URL unset), and leaves it running.
            server = postgres_of(data)
            created = blip2_jobs(data, "keys", "create", "--tenant", "acme")
            assert said_embedded(created, database), created.stderr
            assert postgres_of(data) == server, "`keys create` stopped or replaced the server `up` runs"
            answer = httpx.get(f"{api}/v1/usage", headers=bearer(created.stdout.strip()), timeout=30)
            assert answer.status_code == 200 and answer.json()["tenant"] == "acme", answer.text
            family = [p.pid for p in psutil.Process(up.pid).children(recursive=True)]
        finally:
            stop(up, timeout_s=60)
        assert up.returncode == 0, log.read_text()[-3000:]
        # Everything it started goes too, if not by the time `up` itself has exited then soon after.
        wait_until(lambda: not _alive(family), "every process `up` started to stop")
        wait_until(lambda: not _servers_using(data), "the embedded servers to stop")


def embedded_url(server: str, pattern: str, banner: str) -> str:
    """The URL `up` printed for an embedded server."""
    found = re.search(rf"^{server}\s+({pattern})\s+\(embedded", banner, re.MULTILINE)
    assert found, banner
    return found.group(1)


def _alive(pids: list[int]) -> list[int]:
    """The processes among `pids` still running (a zombie has stopped)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def development_key_in(log: str) -> str:
    """The key `up` printed for the embedded default."""
    found = re.search(r"API key\s+(b2j_\S+)", log)
    assert found, log[-3000:]
    return found.group(1)


def _servers_using(data_dir: Path) -> list[int]:
    """Embedded server processes still running on this data directory."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        text = " ".join(process.info["cmdline"] or []) + " " + str(process.info["cwd"] or "")
        if str(data_dir) in text:
            found.append(process.info["pid"])
    return found
