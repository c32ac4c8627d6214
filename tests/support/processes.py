"""Real service processes for tests: `blip2-jobs worker`, `api` and `flower` as subprocesses."""

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from jobs.settings import Settings
from tests.support.services import settings_env

CLI = [str(Path(sys.executable).with_name("blip2-jobs"))]
TINY_QUEUES = ["infer.tiny-opt", "infer.tiny-t5", "infer.tiny-instruct", "infer.tiny-itm"]
# One torch thread per process. With two on a 2-core machine, shared with the test process, other
# workers and other test runs, the threads spin against each other: a job that takes a steady 2 s
# with one took anything from 1 s to 28 s, and minutes on a loaded machine.
PROCESS_ENV = {"OMP_NUM_THREADS": "1"}


def wait_for_log(log: Path, needle: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until `needle` appears in the process's log; fail with the log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}) before {needle!r}:\n{text[-4000:]}")
        time.sleep(0.3)
    raise TimeoutError(f"no {needle!r} after {timeout_s} s:\n{log.read_text(errors='replace')[-4000:]}")


def wait_for_cpu_work(
    process: psutil.Process, cpu_s: float, timeout_s: float = 120, unless: Callable[[], bool] | None = None
) -> None:
    """Wait until the main thread of `process` has done `cpu_s` more seconds of CPU work than now,
    or until `unless()` holds (checked each time round, when given).

    A job's process that has computed that long since it was seen claiming its job is past its
    database reads and into its model work, however loaded the machine: CPU time, unlike wall
    time, does not stretch while other processes hold the cores.
    """
    start = _main_thread_cpu_s(process)
    deadline = time.monotonic() + timeout_s
    while _main_thread_cpu_s(process) - start < cpu_s:
        if unless is not None and unless():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {process.pid} did not compute for {cpu_s} s within {timeout_s} s")
        time.sleep(0.01)


def _main_thread_cpu_s(process: psutil.Process) -> float:
    main = next(thread for thread in process.threads() if thread.id == process.pid)
    return float(main.user_time + main.system_time)


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60, **kwargs: object) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}) before {url} answered")
        try:
            httpx.get(url, timeout=2, **kwargs)  # type: ignore[arg-type]
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


@contextmanager
def cli_process(
    args: list[str], settings: Settings, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`blip2-jobs <args>` with these settings (and `env` added), stopped (SIGTERM, then SIGKILL) afterwards."""
    environment = settings_env(settings) | PROCESS_ENV | (env or {})
    with log.open("wb") as out:
        process = subprocess.Popen([*CLI, *args], env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_worker(
    settings: Settings,
    log: Path,
    model: str = "tiny-opt",
    queues: list[str] | None = None,
    env: dict[str, str] | None = None,
    options: list[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker holding `model` and consuming `queues` (default: every tiny model's queue), ready for jobs;
    `options` are more `blip2-jobs worker` options (--batch-size=4 ...)."""
    args = ["worker", f"--model={model}", f"--queues={','.join(queues or TINY_QUEUES)}", *(options or [])]
    with cli_process(args, settings, log, env) as process:
        wait_for_log(log, "worker process ready", process, timeout_s=300)
        wait_for_log(log, " ready.", process, timeout_s=60)
        yield process
