"""End to end through the service against the same model called directly, measured side by side.

    .venv/bin/python -m bench.service                          # shapes-blip2, 16 clients, 5 rounds of 256 jobs
    .venv/bin/python -m bench.service --model mid-opt --jobs 128   # ~40 M parameters, built here

Starts the system as a user would (servers, the API, one worker; see bench/harness.py) and loads the
same model in this process. Then, --rounds times, side by side: the model captions the same images
with the same decoding (greedy, exactly --tokens new tokens) directly in batches of --batch for a few
seconds, and C clients each submit a caption job and wait for its result, again and again, until
--jobs jobs are done. Prints images per second for each round, the service's ratio to the direct
batches in the same round and its median, and the model one image at a time once at the end.
"""

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
from PIL import Image

from bench.cpu import BENCHMARK, RoleCpu, cpu_by_role, settle
from bench.harness import (
    RunningSystem,
    batch_gaps,
    database_now,
    model_seconds,
    models_file_for,
    photos,
    postgres,
    postgres_sessions,
    run_job,
    running_system,
)  # fmt: skip
from cli.service_commands import default_api_workers

MEASURE_S = 3.0  # each direct path runs at least this long


def main() -> None:
    args = _arguments()
    images = photos(4)
    decoding = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "num_beams": 1}
    rounds: list[tuple[float, float]] = []  # (the model directly in batches, the service), images/s
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-service-") as scratch:
        worker_args = [
            f"--batch-size={args.worker_batch or args.batch}", f"--batch-wait-ms={args.wait_ms}",
            f"--batch-wait-share={args.wait_share}", f"--threads={args.threads}",
        ]  # fmt: skip
        models_file = models_file_for(args.model, Path(scratch))
        with running_system(
            Path(scratch), models=[args.model], worker_args=worker_args, api_workers=args.api_workers,
            models_file=models_file, workers_per_model=args.workers,
        ) as system, postgres(system.settings) as db:  # fmt: skip
            direct = _Direct(args, images, decoding, system.data_dir, models_file)
            image_ids = system.upload(images)
            asyncio.run(_clients(system, image_ids, args, decoding, jobs=args.clients))  # warm-up
            settle(system)
            spent, batches_before = RoleCpu(), _batch_sizes(system, args.model)
            beside, beside_s = RoleCpu(), 0.0  # what the service's processes spent while the model ran directly
            sessions_before = postgres_sessions(db)
            served_s, model_s = 0.0, 0.0  # the rounds' service stretches, and the model's passes within them
            first_since = database_now(db)
            for _ in range(args.rounds):
                # Side by side, round after round: a shared machine's speed drifts by a quarter within
                # minutes, and a ratio means something only between figures taken at the same time.
                before, started = cpu_by_role(system), time.perf_counter()
                batched = direct.batched()
                beside_s += time.perf_counter() - started
                now = cpu_by_role(system)
                beside, before = beside + (now - before), now
                since = database_now(db)
                service, round_latencies = asyncio.run(_clients(system, image_ids, args, decoding, jobs=args.jobs))
                until = database_now(db)
                served_s, model_s = served_s + until - since, model_s + model_seconds(db, since, until)
                # The round ends with its last answer, but the worker still has the messages of jobs that ran
                # in others' batches: each claims nothing, and costs CPU. Count it, and let it end before the
                # model runs directly again, on a quiet machine.
                spent += cpu_by_role(system) - before + settle(system)
                rounds.append((batched, service))
                latencies += round_latencies
            jobs = args.jobs * args.rounds
            gaps = batch_gaps(db, first_since, database_now(db))
            cpu = spent.per_job_ms(jobs)
            sessions = postgres_sessions(db) - sessions_before
            batches = _batch_sizes(system, args.model)[len(batches_before) :]
            alone = direct.alone()
    print(f"model {args.model}, {args.clients} clients, {args.rounds} rounds of {args.jobs} jobs, "
          f"greedy {args.tokens} new tokens")  # fmt: skip
    threads = args.threads or "its own choice of"
    worker_batch = args.worker_batch or args.batch
    print(f"{args.workers} worker(s), batches of up to {worker_batch} (wait {args.wait_ms} ms, "
          f"or {args.wait_share:.0%} of the last pass), {threads} CPU threads, "
          f"{args.api_workers} API process(es)")  # fmt: skip
    print(f"{'round':<6} {f'the model directly, batches of {args.batch}':>36} {'the service':>12} {'ratio':>7}")
    for n, (batched, service) in enumerate(rounds, 1):
        print(f"{n:<6} {batched:>29.1f} img/s {service:>6.1f} img/s {service / batched:>6.2f}x")
    ratios = [service / batched for batched, service in rounds]
    service = statistics.median(service for _, service in rounds)
    print(f"the service against the model directly in batches of {args.batch}: median {statistics.median(ratios):.2f}x "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")  # fmt: skip
    print(f"the model directly, one image at a time (after the rounds): {alone:.1f} img/s, "
          f"the service's median {service / alone:.2f}x that")  # fmt: skip
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    print(f"job latency as clients saw it: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(Counter(batches).items()))
    print(f"the worker ran {len(batches)} batches, by size: {sizes}")
    busy = model_s / (served_s * args.workers)
    print(f"its model ran {busy:.0%} of the time (the rest: claiming, gathering, recording, the next message)")
    print(f"around each pass (medians of {gaps.batches} batches): the pass {gaps.pass_s * 1000:.0f} ms; from the "
          f"claim to the last result, less the pass, {gaps.around_pass_s * 1000:.0f} ms; from one batch's last result "
          f"to the next one's claim {gaps.between_s * 1000:.0f} ms")  # fmt: skip
    print("CPU per job, by process: " + ", ".join(f"{role} {ms:.1f} ms" for role, ms in cpu.items()))
    print(f"Postgres connections opened during the rounds: {sessions} ({sessions / jobs:.2f} per job)")
    available = (os.cpu_count() or 1) * 1000 / service
    print(f"  in all {sum(cpu.values()):.1f} ms of the {available:.1f} ms of CPU the machine's cores had per job")
    idle = {role: s for role, s in beside.seconds.items() if role != BENCHMARK}
    print(
        f"while the model ran directly, the service's processes used {sum(idle.values()) / beside_s:.0%} of a core: "
        + ", ".join(f"{role} {s / beside_s:.0%}" for role, s in idle.items())
    )


def _batch_sizes(system: RunningSystem, model: str) -> list[int]:
    """The size of every batch the model's workers ran so far, from their logs (worker/batches.py logs each)."""
    logs = [system.data_dir / f"worker-{model}.log", *sorted(system.data_dir.glob(f"worker-{model}-*.log"))]
    return [
        int(size) for log in logs for size in re.findall(r"batch of (\d+) \w+ jobs in", log.read_text(errors="replace"))
    ]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-blip2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=256, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the direct batches, then the service")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="the worker's --batch-size and the direct batches")
    parser.add_argument(
        "--worker-batch", type=int, default=0, help="the worker's --batch-size when not --batch (0: --batch)"
    )
    parser.add_argument("--wait-ms", type=float, default=10.0, help="the worker's --batch-wait-ms")
    parser.add_argument("--wait-share", type=float, default=0.05, help="the worker's --batch-wait-share")
    parser.add_argument("--threads", type=int, default=0, help="the worker's --threads (0: its own choice)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for the model, side by side")
    parser.add_argument(
        "--api-workers", type=int, default=default_api_workers(), help="API processes (default: as `blip2-jobs api`)"
    )
    return parser.parse_args()


async def _clients(
    system: RunningSystem, image_ids: list[str], args: argparse.Namespace, decoding: dict[str, int], jobs: int
) -> tuple[float, list[float]]:
    """Images per second over `jobs` jobs from `args.clients` clients, and each job's latency."""
    remaining = list(range(jobs))
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {system.key}"}
    connector = aiohttp.TCPConnector(limit=args.clients * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(system.url, headers=headers, connector=connector, timeout=timeout) as client:

        async def one_client() -> None:
            while remaining:
                n = remaining.pop()
                body = {
                    "kind": "caption",
                    "model": args.model,
                    "input": {"image_id": image_ids[n % len(image_ids)], **decoding},
                    "cache": False,  # measure the workers, not the result cache
                }
                started = time.perf_counter()
                await run_job(client, body)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(args.clients)))
        return jobs / (time.perf_counter() - started), latencies


class _Direct:
    """The same model loaded in this process, captioning the same images with the same decoding."""

    def __init__(
        self, args: argparse.Namespace, images: list[Image.Image], decoding: dict[str, int], data_dir: Path,
        models_file: Path | None,
    ) -> None:  # fmt: skip
        from blip2.loading import load_model
        from blip2.registry import Registry

        self._lm = load_model(args.model, data_dir=data_dir, registry=Registry.load(models_file))
        self._batch = [images[i % len(images)] for i in range(args.batch)]
        self._decoding = decoding
        self._caption(self._batch)  # warm-up

    def batched(self) -> float:
        """Images per second in batches of --batch."""
        return _images_per_second(lambda: self._caption(self._batch), len(self._batch))

    def alone(self) -> float:
        """Images per second one image at a time."""
        return _images_per_second(lambda: [self._caption([image]) for image in self._batch], len(self._batch))

    def _caption(self, images: list[Image.Image]) -> object:
        from blip2.caption import caption

        return caption(self._lm, images, decoding=self._decoding)


def _images_per_second(run: Callable[[], object], images: int, at_least_s: float = MEASURE_S) -> float:
    """Images per second of `run` (which captions `images`), repeated for at least `at_least_s`: a
    single pass of a small model is over before the CPU's clocks and caches settle."""
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < at_least_s or not done:
        run()
        done += images
    return done / elapsed


if __name__ == "__main__":
    main()
