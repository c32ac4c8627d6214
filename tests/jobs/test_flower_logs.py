"""Flower's inspection of the workers, sent through Flower's own inspector to a real Redis: a round
nobody answers is one INFO line saying what it means, a broadcast that fails stays a warning."""

import logging

import pytest
from flower.inspector import Inspector

from jobs.broker import create_celery
from jobs.flower_logs import UNANSWERED, explain_unanswered_inspections
from jobs.settings import Settings

INSPECTOR = "flower.inspector"


@pytest.fixture(autouse=True)
def explained() -> None:
    explain_unanswered_inspections()


def inspect(settings: Settings, methods: tuple[str, ...]) -> None:
    """One round of Flower's inspection of every worker, as its startup sends it (timeout 0.3 s)."""
    inspector = Inspector(None, create_celery(settings), timeout=0.3)
    for method in methods:
        inspector._inspect(method, None)


def inspector_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == INSPECTOR]


def test_a_round_no_worker_answers_is_one_info_line(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    nobody = settings.model_copy(update={"REDIS_KEY_PREFIX": f"{settings.REDIS_KEY_PREFIX}no-workers:"})
    with caplog.at_level(logging.INFO, logger=INSPECTOR):
        inspect(nobody, ("stats", "active_queues", "registered", "conf"))
    assert inspector_records(caplog) == [("INFO", UNANSWERED)]


def test_a_broadcast_that_fails_stays_a_warning(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    unreachable = settings.model_copy(update={"REDIS_URL": "redis://127.0.0.1:1/0"})
    with caplog.at_level(logging.INFO, logger=INSPECTOR):
        inspect(unreachable, ("stats",))
    [(level, message)] = inspector_records(caplog)
    assert level == "WARNING"
    assert message.startswith("Inspect method stats failed: ") and "127.0.0.1:1" in message


def test_the_filter_is_installed_once() -> None:
    explain_unanswered_inspections()
    assert len(logging.getLogger(INSPECTOR).filters) == 1
