"""End to end through the service against the same model called directly, measured side by side.

    .venv/bin/python -m bench.service                          # shapes-blip2, 16 clients, 256 jobs
    .venv/bin/python -m bench.service --model mid-opt --jobs 128   # ~40 M parameters, built here

Starts the system as a user would (servers, the API, one worker; see bench/harness.py), then C
clients each submit a caption job and long-poll its result, again and again, until N jobs are done.
The same model is then loaded in this process and captions the same images with the same decoding
(greedy, exactly --tokens new tokens), in batches of --batch and one image at a time. Prints images
per second for each and the service's ratio to both.
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

from bench.cpu import cpu_by_role
from bench.harness import RunningSystem, models_file_for, photos, postgres_sessions, run_job, running_system
from cli.service_commands import default_api_workers

MEASURE_S = 3.0  # each direct path runs at least this long


def main() -> None:
    args = _arguments()
    images = photos(4)
    decoding = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "num_beams": 1}
    with tempfile.TemporaryDirectory(prefix="bench-service-") as scratch:
        worker_args = [f"--batch-size={args.batch}", f"--batch-wait-ms={args.wait_ms}", f"--threads={args.threads}"]
        models_file = models_file_for(args.model, Path(scratch))
        with running_system(
            Path(scratch), models=[args.model], worker_args=worker_args, api_workers=args.api_workers,
            models_file=models_file, workers_per_model=args.workers,
        ) as system:  # fmt: skip
            image_ids = system.upload(images)
            asyncio.run(_clients(system, image_ids, args, decoding, jobs=args.clients))  # warm-up
            before, batches_before = cpu_by_role(system), _batch_sizes(system, args.model)
            sessions_before = postgres_sessions(system.settings)
            service, latencies = asyncio.run(_clients(system, image_ids, args, decoding, jobs=args.jobs))
            cpu = (cpu_by_role(system) - before).per_job_ms(args.jobs)
            sessions = postgres_sessions(system.settings) - sessions_before - 1  # less the one that counted
            batches = _batch_sizes(system, args.model)[len(batches_before) :]
            data_dir = system.data_dir
        batched, alone = _direct(args, images, decoding, data_dir, models_file)
    print(f"model {args.model}, {args.clients} clients, {args.jobs} jobs, greedy {args.tokens} new tokens")
    threads = args.threads or "its own choice of"
    print(f"{args.workers} worker(s), batches of up to {args.batch} (wait {args.wait_ms} ms), {threads} CPU threads, "
          f"{args.api_workers} API process(es)")  # fmt: skip
    print(f"{'path':<46} {'images/s':>9} {'service ratio':>14}")
    print(f"{'the model directly, one image at a time':<46} {alone:>9.1f} {service / alone:>13.2f}x")
    print(f"{f'the model directly, batches of {args.batch}':<46} {batched:>9.1f} {service / batched:>13.2f}x")
    print(f"{'the service (submit + long-poll per job)':<46} {service:>9.1f}")
    p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
    print(f"job latency as clients saw it: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(Counter(batches).items()))
    print(f"the worker ran {len(batches)} batches, by size: {sizes}")
    print("CPU per job, by process: " + ", ".join(f"{role} {ms:.1f} ms" for role, ms in cpu.items()))
    print(f"Postgres connections opened during the run: {sessions} ({sessions / args.jobs:.2f} per job)")
    available = (os.cpu_count() or 1) * 1000 / service
    print(f"  in all {sum(cpu.values()):.1f} ms of the {available:.1f} ms of CPU the machine's cores had per job")


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
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="the worker's --batch-size and the direct batches")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="the worker's --batch-wait-ms")
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


def _direct(
    args: argparse.Namespace, images: list[Image.Image], decoding: dict[str, int], data_dir: Path,
    models_file: Path | None,
) -> tuple[float, float]:  # fmt: skip
    """Images per second of the model called in this process: in batches, and one image at a time."""
    from blip2.caption import caption
    from blip2.loading import load_model
    from blip2.registry import Registry

    lm = load_model(args.model, data_dir=data_dir, registry=Registry.load(models_file))
    batch = [images[i % len(images)] for i in range(args.batch)]
    caption(lm, batch, decoding=decoding)  # warm-up
    batched = _images_per_second(lambda: caption(lm, batch, decoding=decoding), len(batch))
    alone = _images_per_second(lambda: [caption(lm, [image], decoding=decoding) for image in batch], len(batch))
    return batched, alone


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
