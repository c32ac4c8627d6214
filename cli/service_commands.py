"""Service commands: migrate, api, worker, flower, up (the job system's processes).

    blip2-jobs up                                  # everything, on a fresh machine
    blip2-jobs worker --model tiny-itm --quantize int8

Settings come from the environment (see jobs/settings.py). Heavy imports (uvicorn, Celery, the
API) happen inside the command that needs them. A bad setting or option is one line on stderr
and a non-zero exit, never a traceback.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from jobs.metrics_dir import shared_metrics_dir

if TYPE_CHECKING:
    from jobs.db import SessionFactory
    from jobs.settings import Settings
    from worker.app import WorkerOptions
    from worker.model_holder import ModelLoadOptions
    from worker.runtime import BatchOptions

_STOP_GRACE_S = 30.0


def register(app: typer.Typer) -> None:
    """Attach the service commands to the root app."""
    for command in (migrate, api, worker, flower, up):
        app.command()(command)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a bad setting, option, model name or unreachable database into `error: ...` on stderr, exit 2."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from blip2.errors import Blip2Error
    from jobs.db import database_error_summary
    from jobs.errors import JobsError
    from jobs.settings import MissingSetting

    try:
        yield
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        _fail(problems)
    except MissingSetting as exc:
        _fail(f"{exc}{_SERVERS_HINT}")
    except (Blip2Error, JobsError) as exc:
        _fail(str(exc))
    except DBAPIError as exc:
        _fail(f"database: {database_error_summary(exc)} (is DATABASE_URL right, and `blip2-jobs migrate` run?)")


# An unset URL stops only the processes that need Redis too (api, worker, flower): the database-only
# commands fall back on the embedded PostgreSQL, and `up` starts both embedded servers.
_SERVERS_HINT = (
    " (set DATABASE_URL and REDIS_URL to your servers, e.g. those `blip2-jobs up` prints,"
    " or run the whole system with `blip2-jobs up`)"
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def settings_from_environment() -> "Settings":
    from jobs.settings import Settings

    return Settings()


@contextmanager
def database_settings() -> Iterator["Settings"]:
    """The settings, for a command that needs only the database (keys, tenants, usage, migrate).

    With DATABASE_URL unset that is the embedded PostgreSQL under BLIP2_DATA_DIR, as `up` runs it:
    the server `up` is running, or one started here and stopped again on exit (jobs/embedded.py).
    """
    from jobs.embedded import database_for

    configured = settings_from_environment()
    with database_for(configured) as settings:
        if not configured.DATABASE_URL:
            typer.echo(f"database: embedded PostgreSQL, {settings.DATABASE_URL} (DATABASE_URL is not set)", err=True)
        yield settings


@contextmanager
def database_sessions() -> Iterator["SessionFactory"]:
    """Sessions on the database of `database_settings`, its connections closed on exit."""
    from jobs.db import create_db_engine, create_session_factory

    with database_settings() as settings:
        engine = create_db_engine(settings)
        try:
            yield create_session_factory(engine)
        finally:
            engine.dispose()


def migrate() -> None:
    """Upgrade the database schema to the latest migration."""
    from jobs.schema_migrations import upgrade

    with one_line_errors(), database_settings() as settings:
        upgrade(settings)
    typer.echo("database schema is up to date")


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=0, help="API processes sharing the port (0: one per CPU core, at most 4).")
    ] = 0,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    workers = workers or default_api_workers()
    with ExitStack() as stack:
        if workers > 1:  # N processes answer /metrics in turn: each must expose what all of them recorded
            stack.enter_context(shared_metrics_dir())
        import uvicorn

        from api.main import create_app

        with one_line_errors():
            app = create_app(settings_from_environment())
        # No line per request: at hundreds of requests a second that is most of the API's work; metrics count them.
        if workers == 1:
            uvicorn.run(app, host=host, port=port, access_log=False)
            return
        # Several processes: each builds its own app (and connections) from the same environment.
        uvicorn.run(
            "api.main:app_from_environment", factory=True, host=host, port=port, workers=workers, access_log=False
        )


def default_api_workers() -> int:
    """One API process per core, up to 4: a submission spends most of its time in Python (bench/api.py
    took 205 submits/s from one process and 312/s from two on a 2-core machine), and past a few
    processes the database, not the API, is what submissions wait for."""
    return min(os.cpu_count() or 1, 4)


def worker(
    model: Annotated[str | None, typer.Option(help="Model to load and serve (default BLIP2_DEFAULT_MODEL).")] = None,
    queues: Annotated[
        list[str] | None, typer.Option(help="Queues to consume, repeatable or comma-separated (default infer.<model>).")
    ] = None,
    quantize: Annotated[
        str, typer.Option(help="none, int8, int4 (nf4/fp4), or per component: llm=int4,vision=int8.")
    ] = "none",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N, or balanced (spread over every GPU).")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(min=0, help="Most rows in one forward pass (a job takes one per beam); 0: 16 on CPU, 64 on GPU."),
    ] = 0,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch with room waits for more jobs (0: never waits).")
    ] = 10.0,
    batch_wait_share: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Or, when longer, this share of the time the last batch of its kind took (a slow model's "
            "batches fill; 0: --batch-wait-ms alone).",
        ),
    ] = 0.05,
    threads: Annotated[
        int,
        typer.Option(
            min=0, help="CPU threads the model uses; 0: one for a model under 10 M parameters, else one per core."
        ),
    ] = 0,
    gpus: Annotated[
        str | None, typer.Option(help="'all' or indices like 0,1: one worker process per GPU, each pinned to it.")
    ] = None,
    instance: Annotated[
        str, typer.Option(hidden=True, help="Tells apart several workers of one queue on a host.")
    ] = "",
    metrics_port: Annotated[
        int, typer.Option(min=0, help="Serve Prometheus metrics on this port (0: none; with --gpus, one port per GPU).")
    ] = 0,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics listen on; not public unless widened (0.0.0.0).")
    ] = "127.0.0.1",
    tenant: Annotated[
        str | None, typer.Option(help="Serve this tenant's trained model --model, on a queue of its own.")
    ] = None,
) -> None:
    """Run a worker that holds one model in memory and runs its jobs in batches.

    With --tenant it serves that tenant's trained model on the queue infer.tenant.TENANT.MODEL: while it
    runs, the model's jobs go there; when none runs, to its base model's workers, as before.
    """
    with ExitStack() as stack:
        if metrics_port and gpus is None:
            # Before anything imports prometheus_client: the job-running child records, this process serves.
            stack.enter_context(shared_metrics_dir())
        from worker.model_holder import ModelLoadOptions
        from worker.runtime import BatchOptions

        with one_line_errors():
            settings = settings_from_environment()
            load = ModelLoadOptions(device=device, dtype=dtype, quantize=quantize, threads=threads)
            batch = BatchOptions(size=batch_size, wait_ms=batch_wait_ms, wait_share=batch_wait_share)
            options = _worker_options(settings, model, queues, load, batch, instance, tenant)
            if gpus is not None:
                _run_per_gpu(gpus, options, metrics_port, metrics_host)
                return
        from worker.app import run_worker

        if metrics_port:
            _serve_metrics(metrics_host, metrics_port)
        run_worker(settings, options)


def _worker_options(
    settings: "Settings", model: str | None, queues: list[str] | None, load: "ModelLoadOptions",
    batch: "BatchOptions", instance: str, tenant: str | None,
) -> "WorkerOptions":  # fmt: skip
    """What `worker` was asked for, checked here (a typo is one line, not a failed child process)."""
    from blip2.quantization import QuantizationPlan
    from worker.app import WorkerOptions

    name = model or settings.BLIP2_DEFAULT_MODEL
    settings.require("REDIS_URL")
    settings.require("DATABASE_URL")
    _check_servable(settings, name, tenant)
    chosen = [q.strip() for item in queues or [] for q in item.split(",") if q.strip()]
    QuantizationPlan.parse(load.quantize)  # torch-free
    return WorkerOptions(model=name, queues=chosen, load=load, batch=batch, instance=instance, tenant=tenant or "")


def _check_servable(settings: "Settings", name: str, tenant: str | None) -> None:
    """ModelNotFound unless `name` is a registry model, or (with `tenant`) one of the tenant's trained models."""
    from blip2.errors import ModelNotFound
    from blip2.registry import Registry

    if tenant is None:
        if not Registry.load(settings.BLIP2_MODELS_FILE).is_known(name):
            raise ModelNotFound(f"unknown model {name!r} (a tenant's trained model needs --tenant)")
        return
    from jobs.api_keys import check_tenant
    from jobs.catalog import get_trained_model
    from jobs.db import create_db_engine, create_session_factory

    engine = create_db_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            trained = get_trained_model(session, check_tenant(tenant), name)
    finally:
        engine.dispose()
    if trained is None:
        raise ModelNotFound(f"unknown model {name!r}: tenant {tenant!r} has no trained model of that name")


def _run_per_gpu(gpus: str, options: "WorkerOptions", metrics_port: int, metrics_host: str) -> None:
    """One worker process per GPU, supervised until one exits or we are told to stop."""
    from cli.gpu_workers import gpu_indices, per_gpu_workers

    load, batch = options.load, options.batch
    args = [f"--model={options.model}", f"--queues={','.join(options.consumed_queues())}",
            f"--quantize={load.quantize}", f"--dtype={load.dtype}", f"--threads={load.threads}",
            f"--batch-size={batch.size}", f"--batch-wait-ms={batch.wait_ms}", f"--batch-wait-share={batch.wait_share}",
            f"--metrics-host={metrics_host}",
            *([f"--tenant={options.tenant}"] if options.tenant else [])]  # fmt: skip
    _supervise(per_gpu_workers(gpu_indices(gpus), args, metrics_port), dict(os.environ))


def _serve_metrics(host: str, port: int) -> None:
    from jobs.metrics import serve_shared_metrics

    try:
        serve_shared_metrics(host, port)
    except OSError as exc:
        _fail(f"metrics: cannot listen on {host}:{port}: {exc}")


# Flower's task list shows name, uuid, state, received, runtime and worker by default; a job's kind
# and model (the message's argsrepr), its result and a failure's error code need their columns named.
FLOWER_TASK_COLUMNS = "name,uuid,state,args,result,exception,received,runtime,worker"


def flower(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5555,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the Flower dashboard, behind basic auth (FLOWER_USER / FLOWER_PASSWORD), /metrics included."""
    from jobs.broker import create_celery
    from jobs.flower_auth import protect_metrics
    from jobs.flower_logs import explain_unanswered_inspections

    with one_line_errors():
        settings = settings_from_environment()
        celery = create_celery(settings)
    auth = f"{settings.FLOWER_USER}:{settings.FLOWER_PASSWORD}"
    protect_metrics()
    explain_unanswered_inspections()
    celery.start([
        "flower", f"--port={port}", f"--address={address}", f"--basic-auth={auth}",
        f"--tasks-columns={FLOWER_TASK_COLUMNS}",
    ])  # fmt: skip


def up(
    host: Annotated[str, typer.Option(help="Address the API and Flower listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    flower_port: Annotated[int, typer.Option(help="Flower port.")] = 5555,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models the worker serves (default: BLIP2_DEFAULT_MODEL and the tiny ones)."),
    ] = None,
) -> None:
    """Migrate, then run the API, one worker and Flower (with embedded Postgres/Redis if their URLs are unset)."""
    from jobs.embedded import services_for
    from jobs.schema_migrations import upgrade

    with one_line_errors():
        settings = settings_from_environment()
    with one_line_errors(), services_for(settings) as running:
        upgrade(running)  # migrations before anything starts, as compose's one-shot `migrate` service
        _announce_embedded(settings, running)
        _announce_key(settings, running)
        env = os.environ | {"DATABASE_URL": str(running.DATABASE_URL), "REDIS_URL": str(running.REDIS_URL)}
        served = _served_models(models, running.BLIP2_DEFAULT_MODEL)
        started = up_processes(host, port, flower_port, served, running.FLOWER_USER)
        _supervise({process.label: (process.args, {}) for process in started}, env, http_url(reachable(host), port))


def http_url(host: str, port: int) -> str:
    """`http://host:port`, an IPv6 address in brackets (RFC 3986)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def reachable(host: str) -> str:
    """An address on this machine that reaches a server listening on `host`: loopback for a wildcard."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


@dataclass(frozen=True)
class UpProcess:
    """One process `up` starts: named as its service in docker-compose.yml, which runs the same system
    on real machines (tests/test_compose.py keeps the two in step)."""

    service: str
    label: str  # what `up` prints
    args: list[str]  # `blip2-jobs` arguments


def up_processes(host: str, port: int, flower_port: int, served: list[str], flower_user: str) -> list[UpProcess]:
    """The API, a worker for the served models, a worker for long jobs, and Flower."""
    from jobs.queues import queue_for_model

    queues = ",".join(queue_for_model(m) for m in served)
    return [
        UpProcess("api", f"API      {http_url(host, port)} (docs: /docs)", ["api", f"--host={host}", f"--port={port}"]),
        UpProcess("worker", f"worker   models {', '.join(served)}",
                  ["worker", f"--model={served[0]}", f"--queues={queues}"]),
        UpProcess("trainer", "worker   queues train, download (training, evaluation, datasets)",
                  ["worker", "--queues=train,download"]),
        UpProcess("flower", f"Flower   {http_url(host, flower_port)} (user {flower_user})",
                  ["flower", f"--address={host}", f"--port={flower_port}"]),
    ]  # fmt: skip


def _announce_embedded(configured: "Settings", running: "Settings") -> None:
    """The URLs of the embedded servers, for other tools (psql, redis-cli, a second API) to export.

    A configured URL is not repeated: it may carry a password, and whoever set it knows it.
    """
    if not configured.DATABASE_URL:
        typer.echo(f"Postgres  {running.DATABASE_URL}  (embedded: the DATABASE_URL for other tools)")
    if not configured.REDIS_URL:
        typer.echo(f"Redis     {running.REDIS_URL}  (embedded: the REDIS_URL for other tools)")


def _announce_key(configured: "Settings", running: "Settings") -> None:
    """On the embedded default, print a development key; pointed at real servers, say how to make one."""
    from jobs.api_keys import DEVELOPMENT_TENANT, development_key
    from jobs.db import create_db_engine, create_session_factory

    if configured.DATABASE_URL:
        typer.echo("API keys: none made for you on a real database; run `blip2-jobs keys create --tenant NAME`.")
        return
    engine = create_db_engine(running)
    try:
        key_file = running.BLIP2_DATA_DIR / "dev-api-key"
        key = development_key(create_session_factory(engine), key_file)
    finally:
        engine.dispose()
    typer.echo(f"API key   {key}  (tenant {DEVELOPMENT_TENANT}; saved in {key_file})")
    typer.echo("          send it as 'Authorization: Bearer <key>' on every /v1 request")


# Small enough to serve side by side, so every job kind works out of the box: the models trained
# on `shapes` (captions, answers, matching), and the tiny ones (every family).
_UP_MODELS = ("shapes-blip2", "shapes-itm", "tiny-opt", "tiny-t5", "tiny-instruct", "tiny-itm")


def _served_models(requested: str | None, default_model: str) -> list[str]:
    """The models `up`'s worker serves: the first is loaded at start, the others on their first job."""
    names = [m.strip() for m in requested.split(",") if m.strip()] if requested else [default_model, *_UP_MODELS]
    return list(dict.fromkeys(names))


def _self_command() -> list[str]:
    """How to run this CLI again as a child process."""
    script = Path(sys.executable).with_name("blip2-jobs")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from cli.main import app; app()"]


def _supervise(
    children: dict[str, tuple[list[str], dict[str, str]]], env: dict[str, str], api: str | None = None
) -> None:
    """Start the children (each with its arguments and environment over `env`), wait until one exits or
    we are told to stop, then stop them all. With `api`, say once when its /readyz first answers 200:
    the URLs above are printed at once, seconds before the API listens, and a request sent on seeing
    them was refused."""
    stop = _stop_on_signals()
    processes = {
        label: subprocess.Popen([*_self_command(), *args], env=env | extra) for label, (args, extra) in children.items()
    }
    for label in processes:
        typer.echo(f"  {label}")
    typer.echo("Ctrl-C stops everything.")
    waiting_for = api
    try:
        while not stop() and all(p.poll() is None for p in processes.values()):
            if waiting_for is not None and answers_ok(f"{waiting_for}/readyz"):
                typer.echo(f"ready: the API answers at {waiting_for}")
                waiting_for = None
            time.sleep(0.5)
    finally:
        _stop_all(list(processes.values()))
    exited = [label for label, p in processes.items() if p.returncode not in (0, -signal.SIGTERM)]
    if exited and not stop():
        _fail(f"stopped because a process exited: {exited[0].split()[0]}")


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 within two seconds."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_on_signals() -> Callable[[], bool]:
    """Catch SIGINT/SIGTERM; the returned function says whether one arrived."""
    received: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    return lambda: bool(received)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every child (a worker finishes its job first), then SIGKILL what is left after a grace period."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
