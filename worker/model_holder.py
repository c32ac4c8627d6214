"""Loads a model once per worker process and keeps it across jobs (the setup/predict split).

Only ever used in the process that runs jobs (the prefork child), never in the parent that forks:
CUDA must not be initialised in a process that forks afterwards.
"""

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blip2.registry import Registry
from jobs.catalog import resolve_trained
from jobs.db import SessionFactory, session_scope
from jobs.settings import Settings
from worker import metrics as worker_metrics

if TYPE_CHECKING:
    from blip2.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLoadOptions:
    """How this worker loads its models (blip2.loading.LoadOptions, without importing torch)."""

    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"  # none | int8 | int4
    threads: int = 0  # CPU threads a model's operations use; 0: chosen by the model (worker/runtime.py)


class ModelHolder:
    """The models of one process, each loaded on first use and then held.

    Registry models are shared by every tenant, and held for good (the operator names them: there are
    so many). A trained model is held per tenant, since two tenants may each have trained a model of
    the same name, and tenants train without end: the WORKER_MAX_TRAINED_MODELS used last are held,
    the least recently used let go when another loads (loaded again on its next job).
    """

    def __init__(self, settings: Settings, options: ModelLoadOptions, sessions: SessionFactory) -> None:
        self._settings = settings
        self._options = options
        self._sessions = sessions
        self._registry = Registry.load(settings.BLIP2_MODELS_FILE)
        self._models: dict[str, LoadedModel] = {}
        self._trained: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, name: str, tenant: str) -> "LoadedModel":
        """The loaded model; raises blip2's errors (ModelNotFound, CheckpointUnavailable ...) if it cannot load."""
        with self._lock:
            if self._registry.is_known(name):
                if name not in self._models:
                    self._models[name] = self._load(name, tenant)
                return self._models[name]
            return self._get_trained((tenant, name))

    def held(self) -> list[tuple[str, str]]:
        """(tenant, name) of the models held ("" for a registry model's tenant), the trained ones least
        recently used first."""
        return [("", name) for name in self._models] + list(self._trained)

    def _get_trained(self, key: tuple[str, str]) -> "LoadedModel":
        if key in self._trained:
            self._trained.move_to_end(key)
            return self._trained[key]
        while len(self._trained) >= self._settings.WORKER_MAX_TRAINED_MODELS:
            (tenant, name), _ = self._trained.popitem(last=False)
            log.info("model %s of tenant %s let go (WORKER_MAX_TRAINED_MODELS=%d)", name, tenant,
                     self._settings.WORKER_MAX_TRAINED_MODELS)  # fmt: skip
        self._trained[key] = self._load(key[1], key[0])
        return self._trained[key]

    @property
    def registry(self) -> Registry:
        return self._registry

    def load_fresh(self, name: str, tenant: str) -> "LoadedModel":
        """A copy of its own, loaded as this worker loads every model but not held: for a training job,
        which changes the weights, and for long jobs that should not keep a model after they end."""
        return self._load(name, tenant)

    def _load(self, name: str, tenant: str) -> "LoadedModel":
        from transformers.utils import logging as hf_logging

        from blip2.loading import LoadOptions, load_model

        # transformers' "Loading weights" bar is for a terminal: in a worker, Celery logs what it
        # writes to stderr as WARNING lines. These two lines say what the load did, and how long it took.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        options = LoadOptions(device=self._options.device, dtype=self._options.dtype, quantize=self._options.quantize)
        log.info("loading model %s (%s)", name, options)
        with session_scope(self._sessions) as session:  # a model trained since start-up is served too
            registry = resolve_trained(session, self._registry, name, tenant)
        started = time.monotonic()
        model = load_model(name, data_dir=self._settings.BLIP2_DATA_DIR, options=options, registry=registry)
        seconds = time.monotonic() - started
        worker_metrics.model_loaded(name, seconds, self._registry)
        log.info("model loaded in %.1f s: %s", seconds, model.describe())
        return model
