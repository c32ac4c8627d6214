"""A worker's memory over many jobs: its job process's RSS after a warm-up, then every --every jobs.

    .venv/bin/python -m bench.soak                    # shapes-blip2, 10,000 greedy captions
    .venv/bin/python -m bench.soak --jobs 2000 --model tiny-opt

Starts the system (bench/harness.py) with one worker, submits caption jobs from 16 clients until
--jobs are done, and samples the RSS of the worker's job-running process. Prints each sample and the
growth from the first sample after the warm-up (the baseline) to the last.
"""

import argparse
import asyncio
import tempfile
from pathlib import Path

import aiohttp
import psutil

from bench.harness import RunningSystem, photos, run_job, running_system


def main() -> None:
    args = _arguments()
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch,
        running_system(Path(scratch), models=[args.model]) as system,
    ):
        image_ids = system.upload(photos(4))
        samples = asyncio.run(_soak(system, image_ids, args))
    baseline = samples[0][1]
    print(f"model {args.model}: worker job process RSS over {args.jobs} jobs (greedy, {args.tokens} new tokens)")
    print(f"{'jobs done':>10} {'RSS MB':>8} {'vs baseline':>12}")
    for done, rss in samples:
        print(f"{done:>10} {rss:>8.1f} {rss / baseline:>11.3f}x")
    growth = 100 * (samples[-1][1] - baseline) / baseline
    print(f"growth after the {args.warmup}-job warm-up: {growth:+.1f}% ({baseline:.0f} -> {samples[-1][1]:.0f} MB)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-blip2")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    return parser.parse_args()


def _job_process_rss_mb(system: RunningSystem) -> float:
    """The RSS of the worker's prefork child, the process that holds the model and runs the jobs."""
    [child] = psutil.Process(system.workers[0].pid).children()
    return float(child.memory_info().rss) / 2**20


async def _soak(system: RunningSystem, image_ids: list[str], args: argparse.Namespace) -> list[tuple[int, float]]:
    decoding = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "num_beams": 1}
    done, samples = 0, []
    checkpoints = [args.warmup, *range(args.warmup + args.every, args.jobs + 1, args.every)]
    headers = {"Authorization": f"Bearer {system.key}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(system.url, headers=headers, timeout=timeout) as client:

        async def one_client(count: int) -> None:
            nonlocal done
            for n in range(count):
                body = {"kind": "caption", "model": args.model, "cache": False,  # the worker's memory, not the cache's
                        "input": {"image_id": image_ids[n % len(image_ids)], **decoding}}  # fmt: skip
                await run_job(client, body)
                done += 1

        for checkpoint in checkpoints:
            todo = checkpoint - done
            share = [todo // args.clients + (1 if i < todo % args.clients else 0) for i in range(args.clients)]
            await asyncio.gather(*(one_client(n) for n in share if n))
            samples.append((done, _job_process_rss_mb(system)))
            print(f"  {done} jobs: {samples[-1][1]:.1f} MB", flush=True)
    return samples


if __name__ == "__main__":
    main()
