"""Train the demo models, with the service's own jobs, on the synthetic `shapes` data set.

    make demo-models        # or: .venv/bin/python scripts/train_demo_models.py

Starts `blip2-jobs up` on a scratch data directory (embedded PostgreSQL and Redis), then through
its HTTP API: downloads `shapes`, trains small-itm into `shapes-itm` (matching: ITC + ITM, BLIP-2's
first stage), then small-opt into `shapes-blip2` (captions and answers: the second stage, starting
from the vision encoder and Q-Former the first trained), evaluates both on the held-out test split,
and copies the two checkpoints with their figures into blip2/pretrained/, where the registry serves them.
Its last run took 24 minutes with --threads 2 on this 2-core machine, left to it (28 minutes for
2,000 matcher steps on one core, taskset -c 1, while other work used the other).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from blip2.data.shapes import SHAPE_KINDS
from jobs.api_keys import DEVELOPMENT_TENANT
from jobs.catalog import tenant_data_dir
from jobs.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "blip2" / "pretrained"
CLI = str(Path(sys.executable).with_name("blip2-jobs"))


def main() -> None:
    args = _arguments()
    with tempfile.TemporaryDirectory(prefix="blip2-demo-") as scratch:
        port = free_port()
        service = _start_service(Path(scratch), port, args.threads)
        try:
            # `up` on its embedded servers saves a development key (tenant dev) in its data directory.
            key = (Path(scratch) / "data" / "dev-api-key").read_text().strip()
            results = _train_and_evaluate(f"http://127.0.0.1:{port}", key, args)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=120)
        _publish(tenant_data_dir(Path(scratch) / "data", DEVELOPMENT_TENANT), results, args)
    print(json.dumps(results, indent=2))


# What each demo model is trained from and on. The small bases are random, so the matcher trains
# its vision encoder: there is no pre-trained one worth freezing. The captioner starts from the
# matcher's vision encoder and Q-Former, as BLIP-2's generative stage starts from its representation
# stage (contrastive pairs teach a random encoder to see far faster than a language-modelling loss
# does), and, as in BLIP-2, keeps that encoder frozen while its Q-Former and language model learn:
# a frozen encoder runs once per image (training's VisionCache), so a step costs under half as much
# (0.12 s against 0.29 s on one core), and in a trial it learned faster per step as well (held-out
# VQA 0.56 after 500 steps; 0.47 after 400 training the encoder too).
#
# The matcher also trains on each caption with its shape word swapped ("a red circle" -> "a red
# square") as a negative: in a batch of random scenes, pictures differ in colour and place long
# before they differ only in shape, so in-batch negatives alone left shape the one thing neither
# model could tell (held-out "what shape" answers at 0.53, circles taken for squares); with the
# swaps, 0.97, and held-out VQA 0.965 from 0.78, exact captions 0.95 from 0.38 (with 3,200 matcher
# steps; 0.96 and 0.905 after 2,400, 0.94 and 0.84 after 2,000, 0.88 and 0.67 after 1,600).
MATCHER = {"base": "small-itm", "task": "match", "train": ["vision", "qformer"],
           "swap_negatives": [list(SHAPE_KINDS)]}  # fmt: skip
CAPTIONER = {"base": "small-opt", "task": "caption_vqa", "train": ["qformer", "llm"],
             "start_from": "shapes-itm-trained"}  # fmt: skip


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption-steps", type=int, default=3000, help="steps for shapes-blip2")
    parser.add_argument("--match-steps", type=int, default=3200, help="steps for shapes-itm")
    parser.add_argument("--out", type=Path, default=PRETRAINED, help="where the checkpoints go")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (more on a machine left to it)")
    return parser.parse_args()


def _train_and_evaluate(api: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    # Trained under names of their own: the registry already names the published copies.
    with httpx.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        dataset = _run(http, "download shapes", {"kind": "download", "input": {"dataset": "shapes"}})
        matcher = _run(http, "train shapes-itm", _train(MATCHER, "shapes-itm", args.match_steps))
        captioner = _run(http, "train shapes-blip2", _train(CAPTIONER, "shapes-blip2", args.caption_steps))
        test = {
            "shapes-blip2": _evaluate(http, _trained("shapes-blip2"), "caption_vqa"),
            "shapes-itm": _evaluate(http, _trained("shapes-itm"), "match"),
        }
    splits = dataset["result"]["splits"]
    return {
        "command": "make demo-models",
        "dataset": f"shapes (seed 0: {splits['train']} train / {splits['val']} val / {splits['test']} test images)",
        "models": {
            "shapes-blip2": _summary(captioner, CAPTIONER, test["shapes-blip2"]),
            "shapes-itm": _summary(matcher, MATCHER, test["shapes-itm"]),
        },
    }


def _trained(name: str) -> str:
    return f"{name}-trained"


def _train(recipe: dict[str, Any], name: str, steps: int) -> dict[str, Any]:
    settings = {"dataset": "shapes", "task": recipe["task"], "output_model": _trained(name), "max_steps": steps,
                "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "checkpoint_every": 500,
                "train": recipe["train"], "start_from": recipe.get("start_from"),
                "swap_negatives": recipe.get("swap_negatives", [])}  # fmt: skip
    return {"kind": "train", "model": recipe["base"], "input": settings}


def _evaluate(http: httpx.Client, model: str, task: str) -> dict[str, float]:
    body = {"kind": "evaluate", "model": model, "input": {"dataset": "shapes", "split": "test", "task": task}}
    metrics: dict[str, float] = _run(http, f"evaluate {model}", body)["result"]["metrics"]
    return metrics


def _summary(job: dict[str, Any], recipe: dict[str, Any], test: dict[str, float]) -> dict[str, Any]:
    result = job["result"]
    return {"base": recipe["base"], "start_from": recipe.get("start_from"), "task": recipe["task"],
            "steps": result["steps"],
            "final_loss": result["final_loss"], "val": result["metrics"], "test": test,
            "train_seconds": _seconds(job["started_at"], job["finished_at"])}  # fmt: skip


def _run(http: httpx.Client, label: str, body: dict[str, Any]) -> dict[str, Any]:
    created = http.post("/v1/jobs", json=body)
    created.raise_for_status()
    location, last = created.headers["Location"], ""
    while True:
        try:
            job: dict[str, Any] = http.get(location, params={"wait": 5}).json()
        except httpx.TransportError as exc:  # a machine too loaded to answer in time: ask again
            print(f"{label}: no answer from the service ({exc!r}); asking again", flush=True)
            continue
        line = _progress_line(label, job)
        if line != last:
            print(line, flush=True)
            last = line
        if job["status"] == "succeeded":
            return job
        if job["status"] in ("failed", "canceled"):
            raise SystemExit(f"{label}: {job['status']}: {job['error']}")


def _progress_line(label: str, job: dict[str, Any]) -> str:
    detail = job.get("progress_detail") or {}
    if "step" in detail:
        loss = "n/a" if detail.get("loss") is None else f"{detail['loss']:.4f}"  # null: NaN or infinite
        return f"{label}: step {detail['step']}/{detail['max_steps']} loss {loss}"
    return f"{label}: {job['status']} {round(100 * (job.get('progress') or 0))}%"


def _publish(data_dir: Path, results: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    for name in results["models"]:
        target = args.out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(data_dir / "models" / _trained(name), target)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def _start_service(scratch: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # Inference workers for the tiny models only (quick to load): training runs on the long-job worker.
    # One thread per process by default: on a small machine shared with other work (the API, the other
    # workers, a test run) two threads of one training wait on each other at every matrix product
    # (3-10x slower). On a machine left to it, --threads 2 uses both cores of two.
    env |= {"BLIP2_DATA_DIR": str(scratch / "data"), "BLIP2_DEFAULT_MODEL": "tiny-opt", "OMP_NUM_THREADS": str(threads)}
    args = [CLI, "up", f"--port={port}", f"--flower-port={free_port()}", "--models=tiny-opt,tiny-itm"]
    service = subprocess.Popen(args, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        if service.poll() is not None:
            raise SystemExit("blip2-jobs up exited before it was ready")
        time.sleep(1)
    service.terminate()
    raise SystemExit("blip2-jobs up did not become ready in 3 minutes")


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


if __name__ == "__main__":
    main()
