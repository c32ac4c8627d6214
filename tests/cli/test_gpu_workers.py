"""`blip2-jobs worker --gpus`: one worker per GPU, each seeing only its own device.

Starting them for real needs GPUs (scripts/gpu_check.sh runs `--gpus all` on a lent machine); here
the plan is checked, and the refusal where no GPU is visible.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blip2.errors import InvalidArgument
from cli.gpu_workers import gpu_indices, per_gpu_workers
from jobs.settings import Settings
from tests.support.services import settings_env

EXE = shutil.which("blip2-jobs", path=str(Path(sys.executable).parent)) or "blip2-jobs"


def test_each_gpu_gets_a_worker_of_its_own() -> None:
    plan = per_gpu_workers(gpu_indices("0,3"), ["--model=tiny-opt", "--queues=infer.tiny-opt"])
    assert list(plan) == ["worker   GPU 0", "worker   GPU 3"]
    (first, first_env), (second, second_env) = plan.values()
    assert (first_env, second_env) == ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "3"})
    for args, name in ((first, "gpu0"), (second, "gpu3")):
        assert args[:3] == ["worker", "--model=tiny-opt", "--queues=infer.tiny-opt"]
        assert "--device=cuda:0" in args and f"--instance={name}" in args  # its only device, its own Celery name


def test_each_gpu_worker_serves_its_metrics_on_a_port_of_its_own() -> None:
    plan = per_gpu_workers(["0", "3"], ["--model=tiny-opt", "--metrics-host=0.0.0.0"], metrics_port=9100)
    ports = [[arg for arg in args if arg.startswith("--metrics-port=")] for args, _env in plan.values()]
    assert ports == [["--metrics-port=9100"], ["--metrics-port=9101"]]


@pytest.mark.parametrize("spec", ["", "one,two", "0,-1", "gpu0"])
def test_bad_gpu_lists_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument, match="--gpus"):
        gpu_indices(spec)


def test_no_visible_gpu_is_one_line_on_stderr(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings) | {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # a driver that answers nothing
    (tmp_path / "nvidia-smi").chmod(0o755)
    done = subprocess.run([EXE, "worker", "--gpus", "all"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --gpus all: no GPU is visible")
