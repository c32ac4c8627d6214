"""What a job-running process holds: settings, a database session factory, the loaded models.

Built unstarted in the worker's parent and started in each prefork child (`worker_process_init`),
so database connections and CUDA belong to the process that uses them and never cross a fork.
"""

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jobs.db import SessionFactory, create_db_engine, create_session_factory
from jobs.settings import Settings
from worker.decoded_images import DecodedImages
from worker.ended_here import EndedHere
from worker.leftovers import sweep_ended_training_files
from worker.model_holder import ModelHolder, ModelLoadOptions
from worker.presence import Presence

if TYPE_CHECKING:
    from blip2.loading import LoadedModel
    from jobs.broker import Dispatcher

log = logging.getLogger(__name__)


# Rows of a batch when --batch-size is not given: what a CPU keeps busy, and a GPU.
CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 64
# A model on a CPU with fewer parameters than this runs on one thread when --threads is not given.
# Its matrices are too small to share out: on a 2-core machine shapes-blip2 (2 M parameters) captioned
# batches of 16 at 0.96x the speed on one thread as on two, for 63% of the CPU, and one image at a
# time 1.3x faster (28 ms against 37). Through the service (bench/service.py, 16 clients) its job
# process spent 10.5 ms of CPU per job instead of 15-18, at the same throughput (69-72 images/s
# against 61-76). A 40 M-parameter model ran 1.45x faster on two threads, and keeps one per core.
ONE_THREAD_BELOW_PARAMETERS = 10_000_000


MAX_BATCH_WAIT_S = 1.0


@dataclass(frozen=True)
class BatchOptions:
    """How a worker forms batches: up to `size` rows (0: chosen by device), a batch with room waiting for
    more up to `wait_ms`, or `wait_share` of the time its kind's last pass took when that is longer.

    The share lets a slow model's batches fill: on this 2-core machine a 40 M-parameter model took 1.6-2 s
    a pass, and 16 closed-loop clients resubmit over some tens of milliseconds, so a 10 ms wait ran most
    batches part-full (6.3-7.5 images/s); waiting up to 100 ms ran 21 of 26 full (7.4-8.7 images/s, p50
    1.8 s against 2.4). A fast model's wait stays `wait_ms`, and so does a slow one's while its passes
    are short, as when jobs come one at a time: waiting costs at most that share of the model's time.
    """

    size: int = 0
    wait_ms: float = 10.0  # Ray Serve's default wait; 0 runs whatever is queued at once (Triton's)
    wait_share: float = 0.05

    def wait_s(self, last_pass_s: float | None = None) -> float:
        """How long a batch with room waits for more, after its kind's last pass took `last_pass_s`."""
        adaptive = min(self.wait_share * (last_pass_s or 0.0), MAX_BATCH_WAIT_S)
        return max(self.wait_ms / 1000, adaptive)


@dataclass
class WorkerRuntime:
    """Settings and options from the command line; sessions and models once `start` ran in the child."""

    settings: Settings
    preload: str | None  # the model loaded at start-up (others on their first job)
    load_options: ModelLoadOptions = field(default_factory=ModelLoadOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    tenant: str = ""  # whose trained model `preload` is ("": a registry model, shared by every tenant)
    announced: list[str] = field(default_factory=list)  # queues only this worker's kind serves (jobs/presence.py)
    trains: bool = False  # consumes the training queue: removes ended jobs' training files at start (leftovers)
    last_pass_s: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, kind): its last batch's time
    # Opened in the worker's main process before its pool forks: the jobs that ended in the child, told
    # to the main process, which drops their messages (worker/ended_here.py). None: nobody to tell.
    ended_here: EndedHere | None = None
    # Sends a message again for a job whose own message ran other jobs first (worker/batches.py). None:
    # no broker to send to (a runtime driven directly, in tests).
    dispatcher: "Dispatcher | None" = None
    _sessions: SessionFactory | None = None
    _models: ModelHolder | None = None
    _presence: Presence | None = None
    _images: DecodedImages | None = None
    _fitted: DecodedImages | None = None

    def start(self, **_signal: Any) -> None:
        """Connect and load the model, in the process that will run the jobs; then say it serves its queues."""
        self._sessions = create_session_factory(create_db_engine(self.settings))
        self._models = ModelHolder(self.settings, self.load_options, self._sessions)
        self._images = DecodedImages(self.settings.WORKER_IMAGE_CACHE_PIXELS)
        self._fitted = DecodedImages(self.settings.WORKER_IMAGE_CACHE_PIXELS)
        on_gpu, model = False, None
        if self.preload is not None:
            model = self._models.get(self.preload, tenant=self.tenant)
            on_gpu = model.device.type == "cuda"
        threads = _set_threads(self.load_options.threads, model)
        if self.batch.size == 0:
            self.batch = replace(self.batch, size=GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        if self.announced:
            self._presence = Presence(self._sessions, self.announced, self.settings)
            self._presence.start()
        if self.trains:
            sweep_ended_training_files(self.settings.BLIP2_DATA_DIR, self._sessions)
        log.info(
            "worker process ready (model %s, batches of up to %d, %d CPU threads)",
            self.preload, self.batch.size, threads,
        )  # fmt: skip

    def stop(self, **_signal: Any) -> None:
        """The process is ending: withdraw its presence, so its model's jobs go to the base model's workers."""
        if self._presence is not None:
            self._presence.stop()

    @property
    def sessions(self) -> SessionFactory:
        if self._sessions is None:
            self.start()  # a solo-pool or eager run, where no child process is forked
        assert self._sessions is not None
        return self._sessions

    @property
    def images(self) -> DecodedImages:
        """The images this process decoded lately (worker/decoded_images.py)."""
        if self._images is None:
            self.start()
        assert self._images is not None
        return self._images

    @property
    def fitted_images(self) -> DecodedImages:
        """The same images resized to its models' input size lately, by ((image id, tenant), size)."""
        if self._fitted is None:
            self.start()
        assert self._fitted is not None
        return self._fitted

    @property
    def models(self) -> ModelHolder:
        if self._models is None:
            self.start()
        assert self._models is not None
        return self._models


def _set_threads(asked: int, model: "LoadedModel | None") -> int:
    """Set the process's CPU threads as `chosen_threads` says; the number it runs on."""
    import torch

    small = model is not None and model.device.type == "cpu" and model.parameter_count < ONE_THREAD_BELOW_PARAMETERS
    if (threads := chosen_threads(asked, small_cpu_model=small)) is not None:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def chosen_threads(asked: int, *, small_cpu_model: bool) -> int | None:
    """The CPU threads for a process's models: `asked` (--threads), or one for a small preloaded model
    on a CPU (ONE_THREAD_BELOW_PARAMETERS); None leaves torch's own default, one per core."""
    if asked > 0:
        return asked
    return 1 if small_cpu_model else None
