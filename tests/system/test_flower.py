"""Flower tells the truth: seen in a real browser, each job is one task, in the state its job ended in.

Real processes throughout: the API takes the jobs, workers run them, Flower receives the workers'
task events, and Chromium renders Flower's task list (/tasks, filled by Flower's own datatable API).

Jobs that end in a batch have two ways into Flower: the events the batch's worker sends for them
(worker/events.py), and later the no-op delivery of each job's own message. To see the first alone,
the batch's other jobs have their messages withheld: removed from Redis before a worker consumes
the queue, their outbox time moved on so the sweeper does not send them again. The batch then runs
under the one message left, and all Flower can know of the others is what the worker told it.
"""

import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import update

from jobs.db import SessionFactory, session_scope
from jobs.embedded import free_port
from jobs.flower_logs import UNANSWERED
from jobs.models import Job
from jobs.queues import queue_for_model
from jobs.settings import Settings
from jobs.status import JobStatus
from tests.support.auth import bearer
from tests.support.broker import withhold
from tests.support.browser import offline_page
from tests.support.jobs import damage, submit, upload
from tests.support.processes import cli_process, running_worker, wait_for_log
from tests.support.waiting import wait_terminal, wait_until

pytestmark = pytest.mark.slow

# No test worker serves this model's queue but the one this module starts, after the jobs are queued.
BATCH_MODEL = "shapes-blip2"
GREEDY = {"num_beams": 1, "max_new_tokens": 4}
# Flower's task list, in the column order `blip2-jobs flower` sets (FLOWER_TASK_COLUMNS).
FLOWER_STATE = {JobStatus.SUCCEEDED: "SUCCESS", JobStatus.FAILED: "FAILURE"}
COLUMNS = ["name", "uuid", "state", "args", "result", "exception", "received", "runtime", "worker"]


def caption(http: httpx.Client, model: str, image_id: str) -> str:
    return submit(http, {"kind": "caption", "model": model, "input": {"image_id": image_id, **GREEDY}})


def hold_back(sessions: SessionFactory, settings: Settings, queue: str, job_ids: set[str]) -> None:
    """Withhold these jobs' messages (see the module docstring): the sweeper first, then Redis."""
    with session_scope(sessions) as session:
        later = datetime.now(UTC) + timedelta(hours=1)
        session.execute(update(Job).where(Job.id.in_([UUID(i) for i in job_ids])).values(dispatched_at=later))
    assert withhold(settings.REDIS_KEY_PREFIX, queue, job_ids) == len(job_ids), "a withheld job had no message"


def flower_auth(settings: Settings) -> tuple[str, str]:
    return settings.FLOWER_USER, settings.FLOWER_PASSWORD


@pytest.fixture(scope="module")
def flower_listening(flower_url: str, settings: Settings, worker: Path) -> str:
    """Flower, once it receives the workers' events (task events sent before it listens are lost to it)."""

    def hears_a_worker() -> bool:
        known = httpx.get(f"{flower_url}/workers", params={"json": 1}, auth=flower_auth(settings), timeout=30)
        return bool(known.json()["data"])

    wait_until(hears_a_worker, "Flower hears the session worker's heartbeats", timeout_s=120, interval_s=0.5)
    return flower_url


@pytest.fixture(scope="module")
def http(api_url: str, worker: Path, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60, headers=bearer(api_key)) as client:
        yield client


@pytest.fixture(scope="module")
def jobs_shown(
    flower_listening: str,
    http: httpx.Client,
    sessions: SessionFactory,
    worker_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, str]]:
    """Each job this module ran: its model, the state Flower must show, and its error code if it failed."""
    broken = upload(http, (7, 11, 13))
    damage(sessions, broken)
    images = (broken, upload(http, (17, 19, 23)))
    alone = [wait_terminal(sessions, UUID(caption(http, "tiny-opt", image))) for image in images]
    assert [job.status for job in alone] == [JobStatus.FAILED, JobStatus.SUCCEEDED], alone
    batched = run_withheld_batch(http, sessions, worker_settings, tmp_path_factory.mktemp("batch-worker"))
    return {str(job.id): shown_as(job) for job in alone + batched}


def shown_as(job: Job) -> dict[str, str]:
    """What Flower must show of a finished job."""
    return {"model": job.model, "state": FLOWER_STATE[job.status], "code": job.error_code or ""}


def run_withheld_batch(http: httpx.Client, sessions: SessionFactory, settings: Settings, logs: Path) -> list[Job]:
    """Three good jobs and a broken one, their messages withheld, then a last job whose message runs them all."""
    queue = queue_for_model(BATCH_MODEL)
    images = [upload(http, (40 + n, 90, 140)) for n in range(3)] + [upload(http, (41, 43, 47))]
    damage(sessions, images[-1])
    withheld = [caption(http, BATCH_MODEL, image) for image in images]
    hold_back(sessions, settings, queue, set(withheld))
    last = caption(http, BATCH_MODEL, upload(http, (53, 59, 61)))
    with running_worker(settings, logs / "worker.log", model=BATCH_MODEL, queues=[queue], options=["--batch-size=8"]):
        ended = [wait_terminal(sessions, UUID(job_id), timeout_s=300) for job_id in [*withheld, last]]
    assert len({job.batch_id for job in ended}) == 1, "the five jobs did not run as one batch"
    assert [job.status for job in ended] == [JobStatus.SUCCEEDED] * 3 + [JobStatus.FAILED, JobStatus.SUCCEEDED]
    return ended


def flower_states(flower_url: str, settings: Settings, job_ids: list[str]) -> dict[str, str]:
    """What Flower's API knows of these tasks' states."""
    tasks: dict[str, Any] = httpx.get(f"{flower_url}/api/tasks", auth=flower_auth(settings), timeout=30).json()
    return {job_id: tasks[job_id].get("state", "") for job_id in job_ids if job_id in tasks}


@pytest.fixture(scope="module")
def task_list(
    browser: Browser, flower_listening: str, settings: Settings, jobs_shown: dict[str, dict[str, str]]
) -> Iterator[Page]:
    """Flower's /tasks page in Chromium, searched down to this module's jobs, once Flower has heard of them all."""
    ids = list(jobs_shown)
    expected = {job_id: job["state"] for job_id, job in jobs_shown.items()}
    flower_url = flower_listening
    wait_until(lambda: flower_states(flower_url, settings, ids) == expected, "Flower has every job's final state")
    with offline_page(browser, flower_auth(settings)) as opened:
        page = opened.page
        page.goto(f"{flower_url}/tasks")
        page.get_by_role("searchbox").fill(" OR ".join(f"args:{job_id}" for job_id in ids))
        for job_id in ids:  # rows appear once the search has been answered; each job must be one of them
            expect(page.locator(f'tr[id="{job_id}"]'), f"job {job_id} in Flower's task list").to_be_visible()
        expect(page.locator("#tasks-table tbody tr")).to_have_count(len(ids))
        yield page
        assert opened.blocked == [], f"Flower's page reached beyond this machine: {opened.blocked}"


def cells(page: Page, job_id: str) -> dict[str, str]:
    """The task list's row for a job, column name to the text shown."""
    texts = page.locator(f'tr[id="{job_id}"] td').all_inner_texts()
    assert texts, f"job {job_id} is not in Flower's task list"
    return dict(zip(COLUMNS, (text.strip() for text in texts), strict=True))


def test_each_job_is_a_task_in_the_state_it_ended_in(task_list: Page, jobs_shown: dict[str, dict[str, str]]) -> None:
    rows = {job_id: cells(task_list, job_id) for job_id in jobs_shown}
    assert {job_id: row["state"] for job_id, row in rows.items()} == {j: job["state"] for j, job in jobs_shown.items()}
    for job_id, row in rows.items():
        assert ("captions" in row["result"]) == (row["state"] == "SUCCESS"), f"job {job_id}: result shown {row}"


def test_a_failed_task_shows_its_error_code(task_list: Page, jobs_shown: dict[str, dict[str, str]]) -> None:
    failed = {job_id: job["code"] for job_id, job in jobs_shown.items() if job["state"] == "FAILURE"}
    assert len(failed) == 2 and set(failed.values()) == {"invalid_image"}, failed
    for job_id, code in failed.items():
        exception = cells(task_list, job_id)["exception"]
        assert re.search(rf"JobFailed\(.{code}: ", exception), f"job {job_id}: exception shown is {exception!r}"


def test_each_task_names_its_job_kind_and_model(task_list: Page, jobs_shown: dict[str, dict[str, str]]) -> None:
    for job_id, job in jobs_shown.items():
        row = cells(task_list, job_id)
        assert row["name"] == "blip2.caption", row
        assert row["uuid"].startswith(job_id[:8]), row
        assert row["args"] == f"job={job_id} kind=caption model={job['model']}", row


def test_screenshot_of_the_task_list(task_list: Page, tmp_path: Path) -> None:
    """The README's picture (docs/flower-tasks.png): FLOWER_SCREENSHOT=path saves it there too."""
    shot = tmp_path / "flower-tasks.png"
    task_list.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
    if target := os.environ.get("FLOWER_SCREENSHOT"):
        shutil.copyfile(shot, target)


def test_flower_started_before_any_worker_says_so_without_a_warning(settings: Settings, tmp_path: Path) -> None:
    """As `blip2-jobs up` starts it: no worker answers its first inspection yet, and that is not a failure."""
    nobody = settings.model_copy(update={"REDIS_KEY_PREFIX": f"{settings.REDIS_KEY_PREFIX}no-workers:"})
    log = tmp_path / "flower.log"
    with cli_process(["flower", "--port", str(free_port())], nobody, log) as process:
        wait_for_log(log, UNANSWERED, process, timeout_s=120)
    said = log.read_text().splitlines()
    assert [line for line in said if line.startswith(("[W", "[E"))] == [], said
    assert [line for line in said if "inspector" in line] == [line for line in said if UNANSWERED in line]
