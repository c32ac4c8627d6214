"""bench/cpu.py tells the system's processes apart by role and counts each one's CPU time."""

import os
import subprocess
import sys
from pathlib import Path

from bench.cpu import RoleCpu, _parsed, cpu_by_role
from bench.harness import RunningSystem
from jobs.settings import Settings

# Burns `seconds` of its own CPU time (however slow the machine), says so, then waits to be killed.
BURN = "import sys, time\nwhile time.process_time() < {seconds}: pass\nprint('burnt', flush=True)\ntime.sleep(600)"
# Starts a child that burns, as a worker's main process starts the job process that holds the model.
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN.format(seconds=0.4)!r}])"


def _started(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_cpu_time_is_counted_per_role(tmp_path: Path) -> None:
    api, worker = _started(BURN.format(seconds=0.3)), _started(PARENT)
    system = RunningSystem("http://unused", "key", Settings(), tmp_path, api, [worker])
    try:
        before = cpu_by_role(system)
        assert api.stdout is not None and worker.stdout is not None
        assert api.stdout.readline() == worker.stdout.readline() == "burnt\n"
        spent = (cpu_by_role(system) - before).seconds
    finally:
        for process in (api, worker):
            process.kill()
            process.wait()
    assert spent["api"] >= 0.2 and spent["worker job process"] >= 0.3, spent
    assert spent["worker main"] < 0.2, spent  # it only waited for its child


def test_a_process_name_may_hold_spaces_and_parentheses() -> None:
    process = _parsed(42, "42 (a (b) c) S 7 42 42 0 -1 4194304 1 0 0 0 250 50 0 0 20 0 1 0 1 0 0")
    assert (process.pid, process.parent, process.name) == (42, 7, "a (b) c")
    assert process.cpu_s == 300 / os.sysconf("SC_CLK_TCK")  # user + system clock ticks, in seconds


def test_stretches_add_up_per_role() -> None:
    first, second = RoleCpu({"api": 1.0, "redis": 0.5}), RoleCpu({"api": 2.0, "postgres": 0.25})
    assert (first + second).seconds == {
        **dict.fromkeys((first + second).seconds, 0.0),
        "api": 3.0,
        "redis": 0.5,
        "postgres": 0.25,
    }
