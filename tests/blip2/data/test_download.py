"""Downloads from a real local HTTP server that drops connections and ignores Range; archive safety."""

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from blip2.data.download import DownloadProgress, download_file, extract_archive, is_archive
from blip2.errors import ChecksumMismatch, DownloadCanceled, DownloadFailed, InvalidArchive, UnsafeArchive
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


# --- archives ---


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def tar_bytes(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for info in members:
            body = (data or {}).get(info.name, b"")
            info.size = len(body) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(body) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_extracts_zip_into_new_folder(tmp_path: Path) -> None:
    archive = write(tmp_path / "a.zip", zip_bytes({"top/a.txt": b"A", "top/sub/b.txt": b"B"}))
    files = extract_archive(archive, tmp_path / "out")
    assert sorted(files) == [tmp_path / "out/top/a.txt", tmp_path / "out/top/sub/b.txt"]
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]  # no staging left


@pytest.mark.parametrize("mode,suffix", [("w:gz", "tar.gz"), ("w", "tar"), ("w:gz", "tgz")])
def test_extracts_tar_with_inner_symlink_into_existing_folder(tmp_path: Path, mode: str, suffix: str) -> None:
    members = [member("d", tarfile.DIRTYPE), member("d/a.txt"), member("d/link", tarfile.SYMTYPE, "a.txt")]
    archive = write(tmp_path / f"a.{suffix}", tar_bytes(members, {"d/a.txt": b"A"}, mode))
    assert is_archive(archive)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/kept.txt").write_text("kept")
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/d/link").read_bytes() == b"A"
    assert (tmp_path / "out/kept.txt").read_text() == "kept"


UNSAFE_TARS = {
    "parent": [member("ok.txt"), member("../evil.txt")],
    "nested parent": [member("ok.txt"), member("a/../../evil.txt")],
    "absolute": [member("ok.txt"), member("/tmp/evil.txt")],
    "symlink out": [member("ok.txt"), member("link", tarfile.SYMTYPE, "../../outside")],
    "absolute symlink": [member("link", tarfile.SYMTYPE, "/etc")],
    "write through symlink": [member("link", tarfile.SYMTYPE, "."), member("link/evil.txt")],
    "climb out of symlink": [member("up", tarfile.SYMTYPE, "."), member("up/../evil.txt")],
    "hard link out": [member("ok.txt"), member("hard", tarfile.LNKTYPE, "../../etc/passwd")],
    "fifo": [member("ok.txt"), member("pipe", tarfile.FIFOTYPE)],
    "device": [member("dev", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_extracts_nothing(tmp_path: Path, case: str) -> None:
    archive = write(tmp_path / "bad.tar.gz", tar_bytes(UNSAFE_TARS[case], {"ok.txt": b"ok"}))
    with pytest.raises(UnsafeArchive, match="nothing was extracted") as caught:
        extract_archive(archive, tmp_path / "out")
    assert caught.value.code == "unsafe_archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_unsafe_zip_extracts_nothing(tmp_path: Path, name: str) -> None:
    archive = write(tmp_path / "bad.zip", zip_bytes({"ok.txt": b"ok", name: b"evil"}))
    with pytest.raises(UnsafeArchive):
        extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_zip_symlink_pointing_out_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16) | 0  # a Unix symlink, as `zip --symlinks` stores it
        zf.writestr(info, "../../outside")
    archive = write(tmp_path / "bad.zip", buffer.getvalue())
    with pytest.raises(UnsafeArchive, match="symlink"):
        extract_archive(archive, tmp_path / "out")


def test_not_an_archive(tmp_path: Path) -> None:
    path = write(tmp_path / "x.zip", b"just some bytes, not a zip")
    assert not is_archive(path)
    with pytest.raises(InvalidArchive, match="not a zip or tar"):
        extract_archive(path, tmp_path / "out")


def test_clash_with_existing_entry_moves_nothing(tmp_path: Path) -> None:
    archive = write(tmp_path / "a.zip", zip_bytes({"a.txt": b"new", "b.txt": b"B"}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/a.txt").write_text("old")
    with pytest.raises(InvalidArchive, match="already exists"):
        extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]
    assert (tmp_path / "out/a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]
