"""What recording a submission costs the API process, alone against in a group (group commit).

    .venv/bin/python -m bench.submission                 # groups of 16, 5 rounds of 20 groups
    .venv/bin/python -m bench.submission --group 4

Starts the servers (bench/harness.py: PostgreSQL and Redis, as the other benchmarks), stores one
image, then, round after round and side by side, submits caption jobs by `image_id` in this process
the two ways the API does: one at a time (`submit_job`, one transaction each) and `--group` at a
time (`submit_together`: one transaction, one INSERT, one round trip to Redis for their messages).
Prints this process's CPU per job each way, and their ratio: what a group saves the API per job,
without the HTTP around it (bench/api.py and bench/service.py measure that).
"""

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import photos
from blip2.registry import Registry
from jobs.broker import Dispatcher, create_celery
from jobs.db import create_db_engine, create_session_factory, session_scope
from jobs.embedded import services_for
from jobs.image_store import store_image
from jobs.schema_migrations import upgrade
from jobs.schemas import JOB_CREATE_ADAPTER, JobCreateBase
from jobs.settings import Settings
from jobs.submission import BatchItem, Submission, Submitted, submit_job, submit_together

TENANT = "bench"


def main() -> None:
    args = _arguments()
    rounds: list[tuple[float, float]] = []  # CPU ms per job: alone, in groups
    jobs = args.group * args.groups  # per round, each way
    with tempfile.TemporaryDirectory(prefix="bench-submission-") as scratch:
        base = Settings(BLIP2_DATA_DIR=Path(scratch), MAX_UNFINISHED_JOBS_PER_TENANT=1_000_000)
        with services_for(base) as settings:
            upgrade(settings)
            engine, celery = create_db_engine(settings), create_celery(settings)
            try:
                ctx = Submission(create_session_factory(engine), Dispatcher(celery), Registry.load(), settings)
                request = _caption_request(ctx)
                _alone(ctx, request, args.group)  # warm-up: connections, the statements' compiled forms
                _together(ctx, request, args.group)
                for _ in range(args.rounds):
                    alone = _cpu_ms(lambda: _alone(ctx, request, jobs)) / jobs
                    together = _cpu_ms(lambda: _groups(ctx, request, args.group, args.groups)) / jobs
                    rounds.append((alone, together))
            finally:
                celery.close()
                engine.dispose()
    print(f"caption jobs by image_id, {args.rounds} rounds of {jobs} jobs each way; "
          f"CPU of this process per job")  # fmt: skip
    print(f"{'round':<6} {'one at a time':>14} {f'in groups of {args.group}':>17} {'ratio':>7}")
    for n, (alone, together) in enumerate(rounds, 1):
        print(f"{n:<6} {alone:>11.2f} ms {together:>14.2f} ms {together / alone:>6.2f}x")
    alone, together = (statistics.median(column) for column in zip(*rounds, strict=True))
    print(f"median: {alone:.2f} ms one at a time, {together:.2f} ms in groups of {args.group} "
          f"({together / alone:.2f}x)")  # fmt: skip


def _caption_request(ctx: Submission) -> JobCreateBase:
    png = io.BytesIO()
    photos(1)[0].save(png, format="PNG")
    with session_scope(ctx.sessions) as session:
        image_id = store_image(session, TENANT, png.getvalue(), ctx.settings).id
    body = {"kind": "caption", "input": {"image_id": str(image_id)}, "cache": False}
    return JOB_CREATE_ADAPTER.validate_python(body)


def _alone(ctx: Submission, request: JobCreateBase, count: int) -> None:
    for _ in range(count):
        submit_job(ctx, TENANT, request)


def _groups(ctx: Submission, request: JobCreateBase, size: int, count: int) -> None:
    for _ in range(count):
        _together(ctx, request, size)


def _together(ctx: Submission, request: JobCreateBase, count: int) -> None:
    with ctx.sessions() as session:
        outcomes = submit_together(ctx, [(TENANT, BatchItem(request))] * count, session=session)
    if not all(isinstance(outcome, Submitted) for outcome in outcomes):
        raise RuntimeError(f"a submission failed: {outcomes}")


def _cpu_ms(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", type=int, default=16, help="submissions per group")
    parser.add_argument("--groups", type=int, default=20, help="groups per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    main()
