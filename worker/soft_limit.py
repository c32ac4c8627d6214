"""The soft time limit, kept even where library code swallows it.

Celery's prefork pool stops a task at its soft limit by sending the task's process SIGUSR1, whose
handler (billiard's) raises SoftTimeLimitExceeded at whatever Python line the process is on. That is
an `Exception`, and library code that catches every `Exception` swallows it. transformers' `generate`
calls `is_torchdynamo_compiling()` at every step, and that function is `try: ... except Exception:
return False`. A limit landing there was lost: the job ran on, to success, or, hung, to the hard limit.

So each task `arm`s the process: billiard's handler is wrapped so that it also marks the limit as
passed. After each model pass, each training step and each long job, the worker calls `check`,
which raises the limit again if the mark is set. A pass that ended after its limit fails
`time_limit_exceeded`, like one stopped mid-pass: a limit means the same wherever the signal lands.
Work finished before the limit keeps its results.
"""

import signal
import threading
from types import FrameType
from typing import Any

from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded

_passed = threading.Event()


def _on_soft_limit(signum: int, frame: FrameType | None) -> Any:
    _passed.set()
    return soft_timeout_sighandler(signum, frame)


def arm() -> None:
    """At a task's start: clear the mark, and wrap billiard's handler if this process has it. Only a
    pool's child has it: the solo pool's SIGUSR1 is the worker's own (it logs every thread's stack)."""
    _passed.clear()
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set a handler; the threads pool has no soft limit anyway
    if signal.getsignal(signal.SIGUSR1) is soft_timeout_sighandler:
        signal.signal(signal.SIGUSR1, _on_soft_limit)


def passed() -> bool:
    """Whether this task's soft limit has fired (swallowed or not)."""
    return _passed.is_set()


def check() -> None:
    """Raise the soft limit if it fired during this task, though whatever ran then swallowed it."""
    if _passed.is_set():
        raise SoftTimeLimitExceeded()
