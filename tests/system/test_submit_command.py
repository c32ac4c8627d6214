"""`blip2-jobs submit` as a user runs it, a subprocess against the real API and worker: one JSON line per
image on stdout, progress on stderr, reruns and Ctrl-C picked up where they stopped, one-line errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.embedded import free_port
from tests.support.images import png_bytes
from tests.support.processes import CLI
from tests.support.waiting import wait_until

UNSERVED = "nobody/serves-this-model"  # a hub id: accepted, queued, never run by the tests' worker
# Runs a command as a terminal runs one in the foreground: SIGINT at its default. A test run from a
# shell in the background (as CI may be) hands its children SIGINT ignored, and Python, honouring that
# as `nohup` and `&` mean it, then never turns Ctrl-C into KeyboardInterrupt.
IN_FOREGROUND = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]  # fmt: skip


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    for i, color in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        path = tmp_path / f"photo-{i}.png"
        path.write_bytes(png_bytes(width=20 + i, height=20, color=color))
        paths.append(path)
    return paths


def submit(*args: str | Path, key: str, server: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"BLIP2_JOBS_KEY": key}
    command = [*CLI, "submit", *map(str, args), "--server", server]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_caption_a_folder_and_rerun_it(api_url: str, worker: Path, api_key: str, photos: list[Path]) -> None:
    done = submit("caption", *photos, "--model", "tiny-opt", "--max-new-tokens", "3", "--wait", key=api_key,
                  server=api_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = lines(done.stdout)
    assert [line["image"] for line in first] == [str(p) for p in photos], "one line per image, in order"
    assert all(line["status"] == "succeeded" and len(line["result"]["captions"]) == 1 for line in first)
    assert "3/3" in done.stderr, f"no progress on stderr: {done.stderr!r}"
    again = submit("caption", *photos, "--model", "tiny-opt", "--max-new-tokens", "3", "--wait", key=api_key,
                   server=api_url)  # fmt: skip
    assert [line["job_id"] for line in lines(again.stdout)] == [line["job_id"] for line in first], "new jobs on rerun"
    other = submit("vqa", photos[0], "--question", "what colour?", "--model", "tiny-opt", key=api_key, server=api_url)
    assert other.returncode == 0, other.stderr
    [asked] = lines(other.stdout)
    assert asked["status"] == "queued" and asked["job_id"] != first[0]["job_id"], "another request, another job"


def test_ctrl_c_then_rerun_reattaches(api_url: str, api_key: str, photos: list[Path]) -> None:
    command = [*CLI, "submit", "embed", *map(str, photos), "--model", UNSERVED, "--wait", "--server", api_url]
    args = [*IN_FOREGROUND, *command]
    # PYTHONFAULTHANDLER: should it not end, SIGABRT makes it print where each of its threads is.
    env = os.environ | {"BLIP2_JOBS_KEY": api_key, "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    queued = lambda: [j for j in http.get("/v1/jobs", params={"limit": 100}).json()["data"] if j["model"] == UNSERVED]  # noqa: E731
    wait_until(lambda: len(queued()) == len(photos), "the first run submitted its jobs", timeout_s=120)
    process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"Ctrl-C did not end the command in 60 s; where it was:\n{stderr}\nstdout:\n{stdout}")
    assert process.returncode == 130 and stdout == "", (process.returncode, stdout, stderr)
    assert stderr.strip().splitlines()[-1].startswith("interrupted: run the same command again")
    rerun = submit("embed", *photos, "--model", UNSERVED, key=api_key, server=api_url)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(line["job_id"] for line in lines(rerun.stdout)) == sorted(j["id"] for j in queued())
    assert len(queued()) == len(photos), "the rerun made new jobs"
    for job in queued():
        http.post(f"/v1/jobs/{job['id']}/cancel")


def test_a_file_that_is_not_an_image_gets_its_own_line(api_url: str, api_key: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "notes.txt"
    good.write_bytes(png_bytes(color=(3, 3, 3)))
    bad.write_text("not an image")
    done = submit("caption", good, bad, tmp_path / "missing.png", "--model", UNSERVED, key=api_key, server=api_url)
    assert done.returncode == 1, done.stderr
    by_image = {Path(line["image"]).name: line for line in lines(done.stdout)}
    assert by_image["good.png"]["status"] == "queued"
    assert by_image["notes.txt"]["error"]["code"] == "invalid_image" and by_image["notes.txt"]["job_id"] is None
    assert by_image["missing.png"]["error"]["code"] == "unreadable_file"
    httpx.post(
        f"{api_url}/v1/jobs/{by_image['good.png']['job_id']}/cancel", headers={"Authorization": f"Bearer {api_key}"}
    )


@pytest.mark.parametrize("waiting", [[], ["--wait"]])
def test_no_file_accepted_is_a_line_each_and_exit_1(
    api_url: str, api_key: str, tmp_path: Path, waiting: list[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    done = submit("caption", bad, tmp_path / "missing.png", *waiting, "--model", UNSERVED, key=api_key, server=api_url)
    assert done.returncode == 1, done.stderr
    assert [(line["status"], line["error"]["code"]) for line in lines(done.stdout)] == [
        ("refused", "invalid_image"),
        ("refused", "unreadable_file"),
    ]
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["--num-beams", "99"], None, "num_beams"),
        ([], "b2j_wrong", "401 unauthorized"),
        (["--server", "http://127.0.0.1:{closed}"], None, "127.0.0.1:"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    api_url: str, api_key: str, photos: list[Path], args: list[str], key: str | None, expected: str
) -> None:
    args = [arg.format(closed=free_port()) for arg in args]
    server = args.pop(args.index("--server") + 1) if "--server" in args else api_url
    args = [arg for arg in args if arg != "--server"]
    done = submit("caption", *photos, *args, key=key or api_key, server=server)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert expected in done.stderr
