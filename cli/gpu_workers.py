"""One worker process per GPU: `blip2-jobs worker --gpus all` (or `--gpus 0,2`).

Each process sees only its own device (CUDA_VISIBLE_DEVICES), loads the model there as `cuda:0`, and
takes a Celery name of its own (`infer.<model>-gpu<N>@host`), so Flower lists each GPU's worker. The
parent never touches CUDA: it counts the GPUs with `nvidia-smi` and supervises the children as
`blip2-jobs up` does (Ctrl-C or SIGTERM stops them all, each finishing its batch first).
"""

import shutil
import subprocess

from blip2.errors import InvalidArgument


def gpu_indices(spec: str) -> list[str]:
    """The GPUs `--gpus` names: "all" (every one nvidia-smi lists) or a comma-separated list of indices."""
    if spec.strip() != "all":
        indices = [part.strip() for part in spec.split(",") if part.strip()]
        if not indices or not all(index.isdigit() for index in indices):
            raise InvalidArgument(f"--gpus {spec!r}: give 'all' or GPU indices like 0,1")
        return list(dict.fromkeys(indices))
    listed = _nvidia_smi_indices()
    if not listed:
        raise InvalidArgument("--gpus all: no GPU is visible (nvidia-smi lists none)")
    return listed


def _nvidia_smi_indices() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def per_gpu_workers(
    indices: list[str], worker_args: list[str], metrics_port: int = 0
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """For each GPU, a label and the `blip2-jobs` arguments and environment of its worker; with a
    metrics port, the n-th GPU's worker serves its metrics on metrics_port + n."""
    return {
        f"worker   GPU {index}": (
            ["worker", *worker_args, "--device=cuda:0", f"--instance=gpu{index}"]
            + ([f"--metrics-port={metrics_port + n}"] if metrics_port else []),
            {"CUDA_VISIBLE_DEVICES": index},
        )
        for n, index in enumerate(indices)
    }
