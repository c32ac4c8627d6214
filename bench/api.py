"""The API's submission path alone (no worker), against the same HTTP stack answering `GET /healthz`.

    .venv/bin/python -m bench.api                    # 1 and 8 clients, 2,000 submissions each
    .venv/bin/python -m bench.api --api-workers 1    # one API process (default: one per core, up to 4)

Starts the servers and the API (bench/harness.py), uploads one image, then C clients submit caption
jobs by `image_id` as fast as they are answered. Prints submissions per second with p50/p99 latency
for 1 and for C clients, beside the same clients calling `/healthz` (no database, no broker): the
ceiling the framework itself sets, and the submission path's ratio to it.

The clients run on the same cores as the API, Postgres and Redis, so they use aiohttp, whose requests
cost this process about a third of what httpx's do; the last column is the clients' own CPU time per
request, which the API did not get.
"""

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import photos, running_system
from cli.service_commands import default_api_workers


def main() -> None:
    args = _arguments()
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as scratch,
        running_system(Path(scratch), api_workers=args.api_workers) as system,
    ):
        [image_id] = system.upload(photos(1))
        job_input = {"image_id": image_id, "max_new_tokens": 20}
        body = {"kind": "caption", "model": "shapes-blip2", "input": job_input, "cache": False}  # every one queued
        headers = {"Authorization": f"Bearer {system.key}"}

        def submit(client: aiohttp.ClientSession) -> Coroutine[Any, Any, aiohttp.ClientResponse]:
            return client.post("/v1/jobs", json=body)

        def health(client: aiohttp.ClientSession) -> Coroutine[Any, Any, aiohttp.ClientResponse]:
            return client.get("/healthz")

        rows = []
        for clients in (1, args.clients):
            asyncio.run(_load(system.url, headers, submit, clients, args.requests // 10))  # warm-up
            health_row = _median(
                asyncio.run(_load(system.url, headers, health, clients, args.requests)) for _ in range(args.repeat)
            )
            submit_row = _median(
                asyncio.run(_load(system.url, headers, submit, clients, args.requests)) for _ in range(args.repeat)
            )
            rows.append((clients, health_row, submit_row))
    runs = f"{args.requests} requests per run, the median run of {args.repeat}"
    print(f"{runs}; {args.api_workers} API process(es), no worker")
    header = f"{'clients':>7} {'healthz/s':>10} {'submits/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}"
    print(f"{header} {'client CPU ms/req':>18}")
    for clients, health_row, submit_row in rows:
        p50, p99 = (
            statistics.median(submit_row.latencies) * 1000,
            statistics.quantiles(submit_row.latencies, n=100)[98] * 1000,
        )
        ratio = submit_row.rate / health_row.rate
        print(
            f"{clients:>7} {health_row.rate:>10.0f} {submit_row.rate:>10.0f} {ratio:>6.2f} {p50:>7.1f} {p99:>7.1f}"
            f" {submit_row.client_cpu_ms:>18.2f}"
        )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median one is shown")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--api-workers", type=int, default=default_api_workers(), help="API processes (default: as `blip2-jobs api`)"
    )
    return parser.parse_args()


@dataclass(frozen=True)
class Row:
    rate: float  # requests per second
    latencies: list[float]  # seconds, each request's
    client_cpu_ms: float  # this process's CPU time per request


async def _load(
    url: str,
    headers: dict[str, str],
    request: Callable[[aiohttp.ClientSession], Coroutine[Any, Any, aiohttp.ClientResponse]],
    clients: int,
    total: int,
) -> Row:
    """`total` requests, `clients` at a time, each on its own connection."""
    remaining = total
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as client:

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with await request(client) as response:
                    await response.read()
                    latencies.append(time.perf_counter() - started)
                    if response.status >= 400:
                        raise RuntimeError(f"{response.status}: {await response.text()}")

        cpu, started = _cpu_s(), time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return Row(total / (time.perf_counter() - started), latencies, (_cpu_s() - cpu) * 1000 / total)


def _median(runs: Iterable[Row]) -> Row:
    """The run of median rate: this machine's speed wanders by a third from one run to the next."""
    ordered = sorted(runs, key=lambda row: row.rate)
    return ordered[len(ordered) // 2]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
