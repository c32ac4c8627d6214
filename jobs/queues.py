"""Queue names: one inference queue per model, and the two shared queues long jobs run on.

A worker holding a model consumes only that model's queue, `infer.<model>`; training and evaluation
run on `train`, downloads on `download`, so hours-long work never blocks inference workers.
"""

import re
from enum import StrEnum

INFERENCE_QUEUE_PREFIX = "infer."
_UNSAFE_QUEUE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class Lane(StrEnum):
    """Which workers run a kind of job: the model's own (inference), or a shared queue for long work."""

    INFERENCE = "infer"
    TRAIN = "train"  # training and evaluation
    DOWNLOAD = "download"


TRAIN_QUEUE = Lane.TRAIN.value
DOWNLOAD_QUEUE = Lane.DOWNLOAD.value


def queue_for_model(model: str) -> str:
    """The inference queue of a model name (a hub id or a path is made queue-name safe)."""
    return INFERENCE_QUEUE_PREFIX + _UNSAFE_QUEUE_CHARS.sub("_", model)
