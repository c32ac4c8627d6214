"""The API's submission path alone (no worker), against the same HTTP stack answering `GET /healthz`.

    .venv/bin/python -m bench.api                    # 1 and 8 clients, 2,000 submissions each
    .venv/bin/python -m bench.api --api-workers 2

Starts the servers and the API (bench/harness.py), uploads one image, then C clients submit caption
jobs by `image_id` as fast as they are answered. Prints submissions per second with p50/p99 latency
for 1 and for C clients, beside the same clients calling `/healthz` (no database, no broker): the
ceiling the framework itself sets, and the submission path's ratio to it.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from bench.harness import photos, running_system


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

        def submit(client: httpx.AsyncClient) -> Coroutine[Any, Any, httpx.Response]:
            return client.post("/v1/jobs", json=body)

        def health(client: httpx.AsyncClient) -> Coroutine[Any, Any, httpx.Response]:
            return client.get("/healthz")

        rows = []
        for clients in (1, args.clients):
            asyncio.run(_load(system.url, headers, submit, clients, args.requests // 10))  # warm-up
            health_row = asyncio.run(_load(system.url, headers, health, clients, args.requests))
            submit_row = asyncio.run(_load(system.url, headers, submit, clients, args.requests))
            rows.append((clients, health_row, submit_row))
    print(f"{args.requests} requests per row, {args.api_workers} API process(es), no worker running")
    print(f"{'clients':>7} {'healthz/s':>10} {'submits/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for clients, (health_rate, _), (rate, latencies) in rows:
        p50, p99 = statistics.median(latencies) * 1000, statistics.quantiles(latencies, n=100)[98] * 1000
        print(f"{clients:>7} {health_rate:>10.0f} {rate:>10.0f} {rate / health_rate:>6.2f} {p50:>7.1f} {p99:>7.1f}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--api-workers", type=int, default=1, help="API processes")
    return parser.parse_args()


async def _load(
    url: str,
    headers: dict[str, str],
    request: Callable[[httpx.AsyncClient], Coroutine[Any, Any, httpx.Response]],
    clients: int,
    total: int,
) -> tuple[float, list[float]]:
    """Requests per second and each request's latency, `clients` at a time, `total` in all."""
    remaining = total
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await request(client)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    raise RuntimeError(f"{response.status_code}: {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return total / (time.perf_counter() - started), latencies


if __name__ == "__main__":
    main()
