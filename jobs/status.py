"""The lifecycle of a job: queued -> running -> succeeded | failed, or canceled before it finishes."""

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
