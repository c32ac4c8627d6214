"""Robust downloads and safe archive extraction, for fetching datasets.

`download_file` streams into `<dest>.part`, resumes with an HTTP Range request after a dropped
connection (starting over when the server ignores Range), retries with exponential backoff, checks
the size and sha256 of the finished part file, and only then renames it to `dest`, so `dest` is
either absent or complete and verified. A canceled or failed download keeps its part file for the
next try to resume; a checksum mismatch deletes it, since resuming bad bytes cannot fix them.
`max_bytes` bounds a download's size: a larger Content-Length is refused before the body is read,
and a body that grows past it is cut off (`DownloadTooLarge`, the part file deleted).

Archives are extracted by `blip2.data.archives`.
"""

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from blip2.errors import ChecksumMismatch, DownloadCanceled, DownloadFailed, DownloadTooLarge

# Statuses that say "try again later" rather than "this will never work".
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_HASH_CHUNK = 1 << 20
# The most one dataset download may fetch: several times COCO (about 20 GB), far from a full disk.
DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 2**30


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
    max_bytes: int | None


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
    max_bytes: int | None = None,
    client: httpx.Client | None = None,
) -> Path:
    """Download `url` to `dest` (see the module docstring for the guarantees); returns `dest`."""
    if not url.startswith(("http://", "https://")):
        raise DownloadFailed(f"{url}: only http and https URLs can be downloaded")
    dest.parent.mkdir(parents=True, exist_ok=True)
    http = client or httpx.Client()
    part = dest.with_name(dest.name + ".part")
    transfer = _Transfer(http, url, part, timeout_s, on_progress, should_stop, max_bytes)
    try:
        _download_with_retries(transfer, retries, backoff_s)
    except DownloadTooLarge:
        part.unlink(missing_ok=True)  # a file too large now is too large on the next try
        raise
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
        _check_size(transfer, total)
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
            done += len(chunk)
            _check_size(transfer, done)
            out.write(chunk)
            _report(transfer, done, total)
    return done


def _check_size(transfer: _Transfer, size: int | None) -> None:
    """Refuse a file whose announced size, or the bytes received so far, pass `max_bytes`."""
    if transfer.max_bytes is not None and size is not None and size > transfer.max_bytes:
        raise DownloadTooLarge(f"{transfer.url}: more than {transfer.max_bytes} bytes, the most this download may be")


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
