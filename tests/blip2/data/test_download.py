"""Downloads from a real local HTTP server that drops connections, ignores Range, or sends too much."""

import hashlib
import os
from pathlib import Path

import pytest

from blip2.data.download import DownloadProgress, download_file
from blip2.errors import ChecksumMismatch, DownloadCanceled, DownloadFailed, DownloadTooLarge
from tests.support.file_server import FileServer

BODY = os.urandom(300_000)  # several chunks on the wire
SHA = hashlib.sha256(BODY).hexdigest()


def fast(url: str, dest: Path, **kwargs: object) -> Path:
    """`download_file` with short backoff, so retry tests take milliseconds."""
    return download_file(url, dest, backoff_s=0.01, **kwargs)  # type: ignore[arg-type]


def test_download_verifies_and_reports_progress(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    seen: list[DownloadProgress] = []
    path = fast(url, tmp_path / "data.bin", sha256=SHA, expected_size=len(BODY), on_progress=seen.append)
    assert path.read_bytes() == BODY
    assert not (tmp_path / "data.bin.part").exists()
    done = [p.bytes_done for p in seen]
    assert len(seen) > 2 and done == sorted(done)
    assert seen[-1] == DownloadProgress(len(BODY), len(BODY), url)
    assert seen[-1].percent == 100.0


def test_dropped_connection_resumes_with_range(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY, drop_first=True)
    seen: list[DownloadProgress] = []
    path = fast(url, tmp_path / "data.bin", sha256=SHA, on_progress=seen.append)
    assert path.read_bytes() == BODY
    first, second = file_server.ranges("/data.bin")
    assert first is None
    assert second is not None and second.startswith("bytes=")
    assert int(second.removeprefix("bytes=").rstrip("-")) > 0  # resumed, not restarted
    assert seen[-1].percent == 100.0


def test_server_ignoring_range_restarts(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY, drop_first=True, honour_range=False)
    path = fast(url, tmp_path / "data.bin", sha256=SHA)
    assert path.read_bytes() == BODY
    assert file_server.ranges("/data.bin")[1] is not None  # asked to resume, got the whole file


def test_complete_part_file_is_finished_without_refetching(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    (tmp_path / "data.bin.part").write_bytes(BODY)
    assert fast(url, tmp_path / "data.bin", sha256=SHA).read_bytes() == BODY
    assert file_server.ranges("/data.bin") == [f"bytes={len(BODY)}-"]


def test_wrong_checksum_deletes_part_file(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    with pytest.raises(ChecksumMismatch, match="sha256"):
        fast(url, tmp_path / "data.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_is_a_mismatch(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    with pytest.raises(ChecksumMismatch, match="bytes"):
        fast(url, tmp_path / "data.bin", expected_size=len(BODY) + 1)
    assert list(tmp_path.iterdir()) == []


def test_transient_errors_are_retried(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY, fail_first=(503, 429))
    assert fast(url, tmp_path / "data.bin", sha256=SHA).read_bytes() == BODY
    assert len(file_server.ranges("/data.bin")) == 3


def test_not_found_fails_at_once(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed, match="HTTP 404") as caught:
        fast(file_server.base_url + "/missing.bin", tmp_path / "missing.bin")
    assert caught.value.code == "download_failed"
    assert len(file_server.requests) == 1


def test_gives_up_after_retries(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY, always_drop=True, honour_range=False)
    with pytest.raises(DownloadFailed, match="3 attempts"):
        fast(url, tmp_path / "data.bin", retries=2)
    assert len(file_server.requests) == 3
    assert not (tmp_path / "data.bin").exists()


def test_unreachable_server_fails(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed):
        fast("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=1, timeout_s=2)
    with pytest.raises(DownloadFailed, match="http"):
        fast("ftp://example.org/x.bin", tmp_path / "x.bin")


def test_should_stop_cancels_and_a_later_call_resumes(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    seen: list[DownloadProgress] = []
    with pytest.raises(DownloadCanceled) as caught:
        fast(url, tmp_path / "data.bin", on_progress=seen.append, should_stop=lambda: len(seen) > 2)
    assert caught.value.code == "download_canceled"
    assert not (tmp_path / "data.bin").exists()
    kept = (tmp_path / "data.bin.part").stat().st_size
    assert 0 < kept < len(BODY)
    assert fast(url, tmp_path / "data.bin", sha256=SHA).read_bytes() == BODY
    assert file_server.ranges("/data.bin")[-1] == f"bytes={kept}-"


def test_announced_size_over_the_limit_is_refused_before_the_body(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/data.bin", BODY)
    with pytest.raises(DownloadTooLarge, match="more than 1000 bytes") as caught:
        fast(url, tmp_path / "data.bin", max_bytes=1000)
    assert caught.value.code == "download_too_large"
    assert isinstance(caught.value, DownloadFailed)
    assert list(tmp_path.iterdir()) == []  # no file, no part file
    assert len(file_server.requests) == 1  # not retried

    assert fast(url, tmp_path / "data.bin", max_bytes=len(BODY)).read_bytes() == BODY


def test_body_without_a_size_is_cut_off_at_the_limit(file_server: FileServer, tmp_path: Path) -> None:
    body = bytes(32 << 20)
    url = file_server.serve("/endless.bin", body, send_length=False)
    with pytest.raises(DownloadTooLarge):
        fast(url, tmp_path / "endless.bin", max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []
    # The server could write no more than the client read plus what the sockets buffer.
    assert file_server.files["/endless.bin"].bytes_sent < len(body) // 2
