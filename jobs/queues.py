"""Queue names: one inference queue per model, and the two shared queues long jobs run on.

A worker holding a model consumes only that model's queue, `infer.<model>` (a worker of one tenant's
trained model: `infer.tenant.<tenant>.<model>`); training and evaluation run on `train`, downloads
on `download`, so hours-long work never blocks inference workers.
"""

import re
from enum import StrEnum

INFERENCE_QUEUE_PREFIX = "infer."
# A tenant's trained model served by workers of its own (`worker --model NAME --tenant TENANT`). No
# model queue starts so: no registry name starts with "tenant.", and a hub id or path that would
# (`tenant.a/b.mine` -> `tenant.a_b.mine`, tenant `a_b`'s model `mine`) is escaped with a leading "_".
TRAINED_QUEUE_PREFIX = INFERENCE_QUEUE_PREFIX + "tenant."
_UNSAFE_QUEUE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class Lane(StrEnum):
    """Which workers run a kind of job: the model's own (inference), or a shared queue for long work."""

    INFERENCE = "infer"
    TRAIN = "train"  # training and evaluation
    DOWNLOAD = "download"


TRAIN_QUEUE = Lane.TRAIN.value
DOWNLOAD_QUEUE = Lane.DOWNLOAD.value


def queue_for_model(model: str) -> str:
    """The inference queue of a model name (a hub id or a path is made queue-name safe), never a
    trained model's own queue."""
    safe = _UNSAFE_QUEUE_CHARS.sub("_", model)
    if (INFERENCE_QUEUE_PREFIX + safe).startswith(TRAINED_QUEUE_PREFIX):
        safe = "_" + safe
    return INFERENCE_QUEUE_PREFIX + safe


def queue_for_trained(tenant: str, name: str) -> str:
    """The queue of the workers of one tenant's trained model, while any is alive (jobs/presence.py)."""
    return TRAINED_QUEUE_PREFIX + _UNSAFE_QUEUE_CHARS.sub("_", f"{tenant}.{name}")
