"""Flower's inspection of the workers, logged for what it means.

Flower asks the workers for their stats, queues, tasks and configuration (Celery's inspect broadcast,
waiting `--inspect_timeout`) when it starts and when its workers page refreshes. Started with the
workers, as `blip2-jobs up` and compose start it, it asks while they are still loading their models,
hears no answer, and logs a warning per method ("Inspect method stats failed", then the same for
active_queues, registered and conf), as if something were broken. No answer only means that no
worker is online yet (or none answered in time): Flower lists each worker as its heartbeats arrive.

`explain_unanswered_inspections()` turns each such round into one INFO line that says so. A
broadcast that failed (the broker unreachable: Flower's warning then carries the error) stays a
warning.
"""

import logging

# Flower's warning for an inspect broadcast nobody answered (flower/inspector.py); one that raised
# is logged as "Inspect method %s failed: %s", and left as it is.
_FAILED = "Inspect method %s failed"
# Every round of inspection asks for `stats`: its record stands for the round, the others are dropped.
_ROUND_METHOD = "stats"
UNANSWERED = (
    "no worker answered Flower's inspection (none online yet, or none answered within --inspect_timeout); "
    "workers appear as their heartbeats arrive"
)


class UnansweredInspections(logging.Filter):
    """On `flower.inspector`: an unanswered round of inspection is one INFO line, not a warning per method."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _FAILED:
            return True
        if record.args != (_ROUND_METHOD,):
            return False
        record.msg, record.args = UNANSWERED, ()
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def explain_unanswered_inspections() -> None:
    """Install the filter on Flower's inspector logger (once)."""
    inspector = logging.getLogger("flower.inspector")
    if not any(isinstance(f, UnansweredInspections) for f in inspector.filters):
        inspector.addFilter(UnansweredInspections())
