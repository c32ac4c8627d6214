"""Robust downloads and safe archive extraction, for fetching datasets.

`download_file` streams into `<dest>.part`, resumes with an HTTP Range request after a dropped
connection (starting over when the server ignores Range), retries with exponential backoff, checks
the size and sha256 of the finished part file, and only then renames it to `dest`, so `dest` is
either absent or complete and verified. A canceled or failed download keeps its part file for the
next try to resume; a checksum mismatch deletes it, since resuming bad bytes cannot fix them.

`extract_archive` reads every member of a zip or tar(.gz/.bz2/.xz) archive before writing anything
and refuses the whole archive if one member is unsafe: an absolute path, a path that climbs out of
the folder (directly or through a symlink in the archive), a link pointing outside, or a device or
fifo. It extracts into a staging folder next to the target and renames into place.
"""

import hashlib
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import httpx

from blip2.errors import ChecksumMismatch, DownloadCanceled, DownloadFailed, InvalidArchive, UnsafeArchive

# Statuses that say "try again later" rather than "this will never work".
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DownloadProgress:
    """How far one file's download has come (`bytes_total` is None when the server does not say)."""

    bytes_done: int
    bytes_total: int | None
    url: str

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return 100.0 * self.bytes_done / self.bytes_total


ProgressCallback = Callable[[DownloadProgress], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class _Transfer:
    """One download's fixed parameters, handed to each attempt."""

    client: httpx.Client
    url: str
    part: Path
    timeout_s: float
    on_progress: ProgressCallback | None
    should_stop: StopCheck | None


class _Retry(Exception):
    """A failure worth another attempt: a short body, an odd Range answer, a 5xx."""


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> Path:
    """Download `url` to `dest` (see the module docstring for the guarantees); returns `dest`."""
    if not url.startswith(("http://", "https://")):
        raise DownloadFailed(f"{url}: only http and https URLs can be downloaded")
    dest.parent.mkdir(parents=True, exist_ok=True)
    http = client or httpx.Client()
    transfer = _Transfer(http, url, dest.with_name(dest.name + ".part"), timeout_s, on_progress, should_stop)
    try:
        _download_with_retries(transfer, retries, backoff_s)
    finally:
        if client is None:
            http.close()
    verify_file(transfer.part, sha256=sha256, expected_size=expected_size, label=url)
    os.replace(transfer.part, dest)
    return dest


def verify_file(path: Path, *, sha256: str | None, expected_size: int | None, label: str) -> None:
    """Raise `ChecksumMismatch` (and delete `path`) unless it has the expected size and sha256."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        path.unlink()
        raise ChecksumMismatch(f"{label}: got {size} bytes, expected {expected_size}")
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256.lower():
            path.unlink()
            raise ChecksumMismatch(f"{label}: sha256 is {digest}, expected {sha256.lower()}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _download_with_retries(transfer: _Transfer, retries: int, backoff_s: float) -> None:
    for attempt in range(retries + 1):
        _check_stop(transfer)
        try:
            _attempt(transfer)
            return
        except httpx.UnsupportedProtocol as exc:
            raise DownloadFailed(f"{transfer.url}: {exc}") from exc
        except (httpx.TransportError, _Retry) as exc:
            if attempt == retries:
                raise DownloadFailed(f"{transfer.url}: gave up after {retries + 1} attempts ({exc})") from exc
            _wait(backoff_s * 2**attempt, transfer)


def _attempt(transfer: _Transfer) -> None:
    """One GET, resuming from the part file's length; raises `_Retry` or an httpx error if cut short."""
    offset = transfer.part.stat().st_size if transfer.part.exists() else 0
    # Byte offsets must count bytes on the wire, so ask for no content encoding.
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={offset}-"} if offset else {})
    request = transfer.client.stream(
        "GET", transfer.url, headers=headers, timeout=transfer.timeout_s, follow_redirects=True
    )
    with request as response:
        start, total = _start_and_total(response, offset, transfer)
        if start is None:
            return
        done = _write_body(response, start, total, transfer)
    if total is not None and done != total:
        raise _Retry(f"connection closed after {done} of {total} bytes")


def _start_and_total(response: httpx.Response, offset: int, transfer: _Transfer) -> tuple[int | None, int | None]:
    """Where this response's body starts in the file (None: the file is already complete), and its size."""
    status = response.status_code
    if status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start is None or start > offset:
            transfer.part.unlink(missing_ok=True)
            raise _Retry(f"unusable Content-Range {response.headers.get('Content-Range')!r}; starting over")
        return start, total
    if status == 416:
        # Asked for bytes past the end: complete if the part file is exactly the file's size.
        _, total = _content_range(response.headers.get("Content-Range", ""))
        if total == offset:
            return None, total
        transfer.part.unlink(missing_ok=True)
        raise _Retry("the part file does not fit the remote file; starting over")
    if status == 200:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None  # Range ignored: start over
    if status in _RETRY_STATUSES:
        raise _Retry(f"HTTP {status}")
    raise DownloadFailed(f"{transfer.url}: HTTP {status}")


def _content_range(header: str) -> tuple[int | None, int | None]:
    """(start, total) from `bytes START-END/TOTAL` or `bytes */TOTAL`; None where absent."""
    unit, _, spec = header.partition(" ")
    if unit != "bytes" or "/" not in spec:
        return None, None
    span, _, total = spec.partition("/")
    start = span.partition("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def _write_body(response: httpx.Response, start: int, total: int | None, transfer: _Transfer) -> int:
    done = start
    with transfer.part.open("r+b" if start else "wb") as out:
        out.seek(start)
        out.truncate()
        _report(transfer, done, total)
        # No chunk size: httpx hands over bytes as they arrive, so a dropped connection loses nothing
        # already received and the next attempt resumes right after it.
        for chunk in response.iter_raw():
            _check_stop(transfer)
            out.write(chunk)
            done += len(chunk)
            _report(transfer, done, total)
    return done


def _report(transfer: _Transfer, done: int, total: int | None) -> None:
    if transfer.on_progress is not None:
        transfer.on_progress(DownloadProgress(done, total, transfer.url))


def _check_stop(transfer: _Transfer) -> None:
    if transfer.should_stop is not None and transfer.should_stop():
        raise DownloadCanceled(f"{transfer.url}: download canceled")


def _wait(seconds: float, transfer: _Transfer) -> None:
    """Sleep before a retry, still answering a cancel within a tenth of a second."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _check_stop(transfer)
        time.sleep(min(left, 0.1))


# --- archives ---


class _Kind(Enum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    SPECIAL = "device or fifo"


@dataclass(frozen=True)
class _Member:
    """An archive member as far as safety is concerned."""

    name: str
    kind: _Kind
    link: str = ""  # a link's target, as stored


def extract_archive(archive: Path, into: Path) -> list[Path]:
    """Extract a zip or tar archive into `into` (made if missing); returns the files written.

    Entries already in `into` are not overwritten: a clash raises `InvalidArchive` before any
    entry is moved in.
    """
    members = _archive_members(archive)
    symlinks = {posixpath.normpath(m.name) for m in members if m.kind is _Kind.SYMLINK}
    problems = [f"{m.name!r} {problem}" for m in members if (problem := _member_problem(m, symlinks))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeArchive(f"{archive.name}: {problems[0]}{more}; nothing was extracted")
    staging = into.parent / f".extract-{into.name}-{secrets.token_hex(4)}"
    try:
        _extract_all(archive, staging)
        return _move_into(staging, into, archive.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_archive(path: Path) -> bool:
    """Whether `path` is a zip or tar archive (judged from its bytes, not its name)."""
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _archive_members(archive: Path) -> list[_Member]:
    """Every member of a zip or tar archive, or `InvalidArchive`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return [_zip_member(zf, info) for info in zf.infolist()]
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                return [_tar_member(info) for info in tar.getmembers()]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArchive(f"{archive.name}: unreadable archive ({exc})") from exc
    raise InvalidArchive(f"{archive.name}: not a zip or tar archive")


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16  # the Unix mode, where the archiver stored one
    if stat.S_ISLNK(mode):
        return _Member(info.filename, _Kind.SYMLINK, zf.read(info).decode("utf-8", "replace"))
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return _Member(info.filename, _Kind.SPECIAL)
    return _Member(info.filename, _Kind.DIR if info.is_dir() else _Kind.FILE)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym():
        return _Member(info.name, _Kind.SYMLINK, info.linkname)
    if info.islnk():
        return _Member(info.name, _Kind.HARDLINK, info.linkname)
    if info.isdir():
        return _Member(info.name, _Kind.DIR)
    if info.isreg():
        return _Member(info.name, _Kind.FILE)
    return _Member(info.name, _Kind.SPECIAL)


def _member_problem(member: _Member, symlinks: set[str]) -> str | None:
    """Why `member` may not be extracted, or None when it is safe."""
    if member.kind is _Kind.SPECIAL:
        return "is a device or fifo"
    if _is_absolute(member.name) or not _stays_inside([], member.name, symlinks):
        return "lands outside the target folder"
    if _through_symlink(posixpath.normpath(member.name), symlinks):
        return "is written through a symlink in the archive"
    if member.kind is _Kind.SYMLINK:
        parent = [p for p in posixpath.dirname(posixpath.normpath(member.name)).split("/") if p]
        if _is_absolute(member.link) or not _stays_inside(parent, member.link, symlinks):
            return f"is a symlink to {member.link!r}, outside the target folder"
    if member.kind is _Kind.HARDLINK and (_is_absolute(member.link) or not _stays_inside([], member.link, symlinks)):
        return f"is a hard link to {member.link!r}, outside the target folder"
    return None


def _is_absolute(name: str) -> bool:
    # A drive letter or a backslash root means absolute on Windows; refuse those here too.
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


def _stays_inside(parent: list[str], relative: str, symlinks: set[str]) -> bool:
    """Whether walking `relative` from `parent` never climbs above the root, nor back out of a symlink.

    Walked piece by piece rather than normalised, because `link/..` leaves wherever `link` points,
    which is not the folder `link` sits in.
    """
    parts = list(parent)
    for piece in relative.replace("\\", "/").split("/"):
        if piece == "..":
            if not parts or "/".join(parts) in symlinks:
                return False
            parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return True


def _through_symlink(name: str, symlinks: set[str]) -> bool:
    parts = name.split("/")
    return any("/".join(parts[:i]) in symlinks for i in range(1, len(parts)))


def _extract_all(archive: Path, staging: Path) -> None:
    staging.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        return
    with tarfile.open(archive, "r:*") as tar:
        try:
            # The standard library's own guard, in case it knows a trick the checks above miss.
            tar.extractall(staging, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeArchive(f"{archive.name}: {exc}; nothing was extracted") from exc


def _move_into(staging: Path, into: Path, label: str) -> list[Path]:
    files = [into / p.relative_to(staging) for p in sorted(staging.rglob("*")) if p.is_file() or p.is_symlink()]
    if not into.exists():
        into.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(into)
        return files
    entries = sorted(staging.iterdir())
    clashes = [e.name for e in entries if (into / e.name).exists() or (into / e.name).is_symlink()]
    if clashes:
        raise InvalidArchive(f"{label}: {clashes[0]!r} already exists in {into.name!r}")
    for entry in entries:
        entry.rename(into / entry.name)
    return files
