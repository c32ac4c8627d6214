"""The lifecycle of a job: queued -> running -> succeeded | failed, or canceled before it finishes; and its priority."""

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is in its lifecycle; stored as its string value."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """True once the job will never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Priority(StrEnum):
    """How urgently a job runs; stored as its string value.

    A batch job runs only when no interactive job of its queue is waiting, until it has waited
    BATCH_PRIORITY_MAX_WAIT_S: from then on it counts as interactive, so it is never starved.
    """

    INTERACTIVE = "interactive"  # someone is waiting for the answer
    BATCH = "batch"  # bulk work that may wait
