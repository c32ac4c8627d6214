"""How soon a worker runs jobs again after its job process dies, against how long a new worker takes.

    .venv/bin/python -m bench.recovery                    # shapes-blip2, 5 kills
    .venv/bin/python -m bench.recovery --model tiny-opt --kills 10

Starts the system (bench/harness.py) with one worker, then kills the worker's job process (SIGKILL,
as the out-of-memory killer or a hard time limit does) --kills times, each time waiting until its
replacement says it is ready and a caption job succeeds on it. Prints, side by side: a new worker's
time from its start to its job process being ready (the baseline), a replacement's time from the
kill to being ready, and from the kill to a finished job; and the ratio of the medians.
"""

import argparse
import statistics
import time
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

from bench.harness import RunningSystem, photos, running_system

READY = "worker process ready"


def main() -> None:
    args = _arguments()
    with (
        TemporaryDirectory(prefix="bench-recovery-") as scratch,
        running_system(Path(scratch), models=[args.model]) as system,
    ):
        log = system.data_dir / f"worker-{args.model}.log"
        worker = psutil.Process(system.workers[0].pid)
        _wait_for_lines(log, READY, 1)
        fresh_s = _ready_times(log)[0] - worker.create_time()
        [image_id] = system.upload(photos(1))
        _caption(system, image_id, args.model)  # warm: the first job's own costs are not the restart's
        to_ready, to_job = [], []
        for kill in range(1, args.kills + 1):
            [child] = worker.children()
            killed_at = time.time()
            child.kill()
            _wait_for_lines(log, READY, kill + 1)
            to_ready.append(_ready_times(log)[kill] - killed_at)
            _caption(system, image_id, args.model)
            to_job.append(time.time() - killed_at)
    print(f"model {args.model}, {args.kills} kills of the job process")
    print(f"new worker, start to job process ready:  {fresh_s:6.2f} s")
    print(f"replacement, kill to ready:              {_spread(to_ready)}")
    print(f"replacement, kill to a finished job:     {_spread(to_job)}")
    print(f"replacement ready in {statistics.median(to_ready) / fresh_s:.2f}x a new worker's time")


def _caption(system: RunningSystem, image_id: str, model: str) -> None:
    body = {"kind": "caption", "model": model, "input": {"image_id": image_id, "max_new_tokens": 8}}
    with system.client() as client:
        job = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"}).json()
        while job["status"] not in ("succeeded", "failed", "canceled"):
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"the caption job ended {job['status']}: {job.get('error')}")


def _ready_times(log: Path) -> list[float]:
    """When each job process said it was ready, from the log's own timestamps (local time)."""
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        if READY in line and line.startswith("["):
            stamps.append(datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return stamps


def _wait_for_lines(log: Path, needle: str, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(needle) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log.name}: fewer than {count} {needle!r} after {timeout_s} s")
        time.sleep(0.05)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s median ({min(values):.2f}-{max(values):.2f})"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-blip2")
    parser.add_argument("--kills", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main()
