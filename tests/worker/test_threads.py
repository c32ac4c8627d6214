"""A worker's CPU threads: one for a small model on a CPU unless --threads says otherwise (worker/runtime.py)."""

from pathlib import Path

from jobs.settings import Settings
from tests.support.processes import running_worker
from worker.runtime import chosen_threads


def test_a_small_cpu_model_gets_one_thread_and_threads_asked_for_win() -> None:
    assert chosen_threads(0, small_cpu_model=True) == 1
    assert chosen_threads(0, small_cpu_model=False) is None  # torch's default: one per core
    assert chosen_threads(3, small_cpu_model=True) == 3
    assert chosen_threads(2, small_cpu_model=False) == 2


def test_the_worker_process_runs_its_model_on_the_threads_chosen(settings: Settings, tmp_path: Path) -> None:
    for options, threads in (([], 1), (["--threads=3"], 3)):
        log = tmp_path / f"worker-{threads}.log"
        with running_worker(settings, log, model="tiny-opt", queues=["infer.tiny-opt"], options=options):
            assert f"batches of up to 16, {threads} CPU threads)" in log.read_text()
