"""What the service benchmarks share: the system running as a user runs it, and clients that use it.

    with running_system(Path("/tmp/bench"), model="shapes-blip2", workers=1) as system:
        image_ids = system.upload(images)
        ...

Servers: PostgreSQL and Redis from DATABASE_URL / REDIS_URL when set, else the embedded ones
`blip2-jobs up` starts on a fresh machine. The API and the workers are real `blip2-jobs` processes.
"""

import io
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
from PIL import Image

from jobs.api_keys import create_key
from jobs.db import create_db_engine, create_session_factory, session_scope
from jobs.embedded import free_port, services_for
from jobs.schema_migrations import upgrade
from jobs.settings import Settings

if TYPE_CHECKING:
    import psycopg

CLI = str(Path(sys.executable).with_name("blip2-jobs"))


@dataclass
class RunningSystem:
    """The API's URL, a key for it, and the settings every process of the system shares."""

    url: str
    key: str
    settings: Settings
    data_dir: Path
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]

    def client(self, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def upload(self, images: Sequence[Image.Image]) -> list[str]:
        """Upload each image once; their ids."""
        ids = []
        with self.client() as client:
            for image in images:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                response = client.post("/v1/images", files={"file": ("image.png", buffer.getvalue(), "image/png")})
                response.raise_for_status()
                ids.append(response.json()["id"])
        return ids


async def run_job(client: aiohttp.ClientSession, body: dict[str, object]) -> dict[str, object]:
    """Submit a job and wait for it to end, as a client of the service does; the finished job.

    The submission asks to wait (`Prefer: wait=30`), so a job that ends within 30 s is answered by the
    submission itself; a longer one is long-polled after it. aiohttp, not httpx: the clients share
    the machine's cores with the service, and an aiohttp request costs this process about a third of
    an httpx one (bench/api.py prints the clients' CPU)."""
    async with client.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"}) as response:
        job = await response.json()
    while job.get("status") not in ("succeeded", "failed", "canceled"):
        async with client.get(f"/v1/jobs/{job['id']}", params={"wait": "30"}) as response:
            job = await response.json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job did not succeed: {job}")
    return dict(job)


@contextmanager
def postgres(settings: Settings) -> Iterator["psycopg.Connection[tuple[Any, ...]]"]:
    """One connection for a benchmark's own reads, opened once: the connections it counts
    (`postgres_sessions`) are then the system's alone."""
    import psycopg

    with psycopg.connect(settings.require("DATABASE_URL"), autocommit=True) as connection:
        yield connection


def postgres_sessions(db: "psycopg.Connection[tuple[Any, ...]]") -> int:
    """Connections Postgres has accepted so far, over every database (`pg_stat_database.sessions`): over a
    stretch of a benchmark, how many connections its processes opened instead of reusing one."""
    row = db.execute("SELECT sum(sessions) FROM pg_stat_database").fetchone()
    return int(row[0]) if row else 0


def database_now(db: "psycopg.Connection[tuple[Any, ...]]") -> float:
    """Postgres's clock (seconds since the epoch): the clock the jobs' timestamps come from."""
    row = db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
    return float(row[0]) if row else 0.0


def model_seconds(db: "psycopg.Connection[tuple[Any, ...]]", since: float, until: float) -> float:
    """The time workers' models spent on the jobs that finished between `since` and `until` (Postgres's
    clock): their passes, each split across its jobs (`worker_seconds`), added up."""
    query = (
        "SELECT coalesce(sum(worker_seconds), 0) FROM jobs "
        "WHERE finished_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) AND NOT cached"
    )
    row = db.execute(query, (since, until)).fetchone()
    return float(row[0]) if row else 0.0


@dataclass(frozen=True)
class BatchGaps:
    """Where a worker's time went around its passes, per batch, medians over the batches that finished
    in a stretch (Postgres's clock): the pass itself; the rest of the batch, from its claim to its last
    result (the claim's statements, the gather's wait, preparing, recording); and the wait from one
    batch's last result to the next batch's claim (taking the next message)."""

    batches: int
    pass_s: float
    around_pass_s: float
    between_s: float


def batch_gaps(db: "psycopg.Connection[tuple[Any, ...]]", since: float, until: float) -> BatchGaps:
    """`BatchGaps` of the batches whose jobs finished between `since` and `until`; with one worker, the
    next batch is the next one claimed."""
    query = (
        "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(finished_at)), sum(worker_seconds)"
        " FROM jobs WHERE finished_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) AND NOT cached"
        " AND batch_id IS NOT NULL GROUP BY batch_id ORDER BY 1"
    )
    rows = [(float(a), float(b), float(s or 0)) for a, b, s in db.execute(query, (since, until)).fetchall()]
    if not rows:
        return BatchGaps(0, 0.0, 0.0, 0.0)
    between = [following[0] - ended for (_, ended, _), following in itertools.pairwise(rows)]
    return BatchGaps(
        batches=len(rows),
        pass_s=statistics.median(s for _, _, s in rows),
        around_pass_s=statistics.median(ended - claimed - s for claimed, ended, s in rows),
        between_s=statistics.median(between) if between else 0.0,
    )


def photos(count: int) -> list[Image.Image]:
    """Photographs of 300-640 px (scikit-image's samples), as the README's figures use."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket")
    loaded = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in names]
    return [loaded[i % len(loaded)] for i in range(count)]


# Models the benchmarks build themselves, served by name through a registry file (BLIP2_MODELS_FILE).
BUILT_MODELS = {"mid-opt": ("opt", "mid")}


def models_file_for(model: str, data_dir: Path) -> Path | None:
    """A registry file naming `model` when it is one the benchmarks build (built first); else None."""
    if model not in BUILT_MODELS:
        return None
    import torch

    from bench.gpu import SCALES, build_checkpoint

    family, scale = BUILT_MODELS[model]
    checkpoint = data_dir / "models" / model
    if not (checkpoint / "config.json").is_file():
        build_checkpoint(family, SCALES[scale], torch.device("cpu"), checkpoint)
    path = data_dir / "bench-models.toml"
    path.write_text(f'[models.{model}]\ncheckpoint = "{checkpoint}"\nfamily = "{family}"\n')
    return path


@contextmanager
def running_system(
    data_dir: Path,
    *,
    models: Sequence[str] = (),
    worker_args: Sequence[str] = (),
    api_workers: int = 0,
    env: dict[str, str] | None = None,
    models_file: Path | None = None,
    workers_per_model: int = 1,
) -> Iterator[RunningSystem]:
    """Servers, migrations, a key, the API and `workers_per_model` workers per model in `models` (none: the
    API alone), each logging to worker-MODEL.log (the second and later to worker-MODEL-N.log)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # No rate limit and a deep queue: the benchmarks measure throughput, not the limits that protect it.
    base = Settings(
        BLIP2_DATA_DIR=data_dir, BLIP2_MODELS_FILE=models_file, SWEEP_INTERVAL_S=5, RATE_LIMIT_REQUESTS=0,
        MAX_UNFINISHED_JOBS_PER_TENANT=100_000,
    )  # fmt: skip
    with _sigterm_exits(), services_for(base) as settings, ExitStack() as stack:
        upgrade(settings)
        key = _new_key(settings)
        environment = os.environ | _env(settings) | (env or {})
        port = free_port()
        api = stack.enter_context(
            _process([CLI, "api", f"--port={port}", f"--workers={api_workers}"], environment, data_dir / "api.log")
        )
        workers = []
        for model, n in itertools.product(models, range(workers_per_model)):
            args = [CLI, "worker", f"--model={model}", *worker_args, *([f"--instance=w{n}"] if n else [])]
            log = data_dir / (f"worker-{model}-{n}.log" if n else f"worker-{model}.log")
            workers.append(stack.enter_context(_process(args, environment, log)))
            _wait_for_log(log, " ready.", workers[-1])
        url = f"http://127.0.0.1:{port}"
        _wait_for_http(f"{url}/healthz", api)
        yield RunningSystem(url, key, settings, data_dir, api, workers)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (a `timeout`, a `kill`) exits through the context managers, so the servers, the API
    and the workers this benchmark started (each in a session of its own) are stopped with it."""

    def exit_now(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _new_key(settings: Settings) -> str:
    engine = create_db_engine(settings)
    try:
        with session_scope(create_session_factory(engine)) as session:
            return create_key(session, tenant="bench", name="benchmark").secret
    finally:
        engine.dispose()


def _env(settings: Settings) -> dict[str, str]:
    return {name: str(value) for name, value in settings.model_dump().items() if value is not None}


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_log(log: Path, needle: str, process: subprocess.Popen[bytes], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in (log.read_text(errors="replace") if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {needle!r}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited ({process.returncode})")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")
