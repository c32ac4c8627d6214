"""CPU time spent by each part of the running system over a stretch of a benchmark: where a job's cost goes.

    before = cpu_by_role(system)
    ...                                   # the measured run
    spent = cpu_by_role(system) - before  # seconds of CPU per role

Roles, from Linux's /proc: the API (its process and every process under it), each worker's main
process and its job process (Celery's prefork child, which holds the model), PostgreSQL's and
Redis's server processes (every one on the machine: run on a quiet one), and this benchmark process
(its clients). On a machine of two cores the model gets what the rest leaves it, so these figures
say what the service costs besides the model.
"""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import RunningSystem

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
BENCHMARK = "benchmark (clients)"
ROLES = ("api", "worker main", "worker job process", "postgres", "redis", BENCHMARK)


@dataclass(frozen=True)
class _Process:
    pid: int
    parent: int
    name: str  # the command's name, as /proc/<pid>/stat gives it (at most 15 characters)
    cpu_s: float  # user + system, this process's own (not its children's)


@dataclass(frozen=True)
class RoleCpu:
    """CPU seconds per role at one moment (or, subtracted, over a stretch)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def __sub__(self, earlier: "RoleCpu") -> "RoleCpu":
        return RoleCpu({role: self.seconds.get(role, 0.0) - earlier.seconds.get(role, 0.0) for role in ROLES})

    def __add__(self, other: "RoleCpu") -> "RoleCpu":
        return RoleCpu({role: self.seconds.get(role, 0.0) + other.seconds.get(role, 0.0) for role in ROLES})

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {role: self.seconds.get(role, 0.0) * 1000 / jobs for role in ROLES}


def cpu_by_role(system: RunningSystem) -> RoleCpu:
    """Each role's CPU seconds so far. A process that exited meanwhile is not counted: the system's
    processes live for the whole benchmark."""
    processes = {p.pid: p for p in _processes()}
    workers = {worker.pid for worker in system.workers}
    seconds: dict[str, float] = {}
    for process in processes.values():
        role = _role(process, processes, system, workers)
        if role is not None:
            seconds[role] = seconds.get(role, 0.0) + process.cpu_s
    return RoleCpu(seconds)


def settle(system: RunningSystem, below: float = 0.05, window_s: float = 0.25, timeout_s: float = 60.0) -> RoleCpu:
    """Wait until the system's processes (all but this benchmark's) use less than `below` of a core over
    `window_s`: the work a measured stretch left behind (a worker's queued messages, Postgres writing) is
    done before the next stretch starts. Returns what they spent meanwhile, the last window included."""
    start = last = cpu_by_role(system)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = cpu_by_role(system)
        if sum(s for role, s in (now - last).seconds.items() if role != BENCHMARK) < below * window_s:
            break
        last = now
    return now - start


def _role(process: _Process, processes: dict[int, _Process], system: RunningSystem, workers: set[int]) -> str | None:
    if process.pid == os.getpid():
        return BENCHMARK
    if process.name.startswith("postgres"):
        return "postgres"
    if process.name.startswith("redis"):
        return "redis"
    if process.pid in workers:
        return "worker main"
    ancestors = set(_ancestors(process, processes))
    if ancestors & workers:
        return "worker job process"
    if process.pid == system.api.pid or system.api.pid in ancestors:
        return "api"
    return None


def _ancestors(process: _Process, processes: dict[int, _Process]) -> Iterator[int]:
    while process.parent in processes:
        process = processes[process.parent]
        yield process.pid


def _processes() -> Iterator[_Process]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it exited while we looked
                continue
            yield _parsed(int(entry.name), stat)


def _parsed(pid: int, stat: str) -> _Process:
    # "pid (name) state ppid ... utime stime ...": the name may hold spaces and parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return _Process(pid, int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS_PER_S)
