"""Safe extraction of zip and tar(.gz/.bz2/.xz) archives: nothing outside the folder, nothing too big.

`extract_archive` reads every member's metadata before writing anything and refuses the whole
archive (`UnsafeArchive`) if one member is unsafe: an absolute path, a path that climbs out of the
folder (directly or through a symlink in the archive), a link pointing outside, or a device or fifo.

It also refuses archive bombs (`ArchiveTooLarge`), judged against `ArchiveLimits`: more members
than `max_members`, more than `max_total_bytes` once expanded, or more expansion than `max_ratio`
(a zip member against its compressed size; a tar against the archive file, since a .tar.gz is
compressed as one stream). A tar is read lazily, so a bomb is refused as soon as its running
totals pass a limit, without decompressing the rest.

Metadata can lie, so the limits are enforced again while writing: a zip member may not produce
more bytes than its header declares (a declaration the ratio rule has already held against its
compressed size), and the members and bytes written are counted against the same limits. A tar
member is exactly as long as its header says (tarfile copies that many bytes), so its header
sizes are what is counted. Everything is written to a staging folder next to the target and
renamed into place; a refusal at any point leaves nothing behind.
"""

import posixpath
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from blip2.errors import ArchiveTooLarge, InvalidArchive, UnsafeArchive

_COPY_CHUNK = 1 << 20
# Files this small are never refused for their ratio: however well they compress, they cannot fill
# a disk, and a short run of zeros or a repetitive JSON line legitimately compresses a thousandfold.
_RATIO_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may expand. The defaults fit COCO (about 20 GB in about 120,000 files)
    several times over, and refuse what deflate does to zeros (about 1000:1)."""

    max_total_bytes: int = 100 * 2**30
    max_members: int = 1_000_000
    # Text and JSON compress 3-20:1, images hardly at all; only degenerate data such as long runs
    # of one byte gets near deflate's ceiling of 1032:1.
    max_ratio: float = 200.0


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
    size: int = 0  # bytes once extracted, as the archive declares


class _Budget:
    """Counts members and bytes against the limits, raising `ArchiveTooLarge` the moment one is passed."""

    def __init__(self, limits: ArchiveLimits, label: str, ratio_cap: int | None = None) -> None:
        self.limits, self.label, self.ratio_cap = limits, label, ratio_cap
        self.members = self.bytes = 0

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveTooLarge(f"{self.label}: more than {self.limits.max_members} members; nothing was extracted")

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.limits.max_total_bytes:
            limit = self.limits.max_total_bytes
            raise ArchiveTooLarge(f"{self.label}: expands to more than {limit} bytes; nothing was extracted")
        if self.ratio_cap is not None and self.bytes > self.ratio_cap:
            raise ArchiveTooLarge(
                f"{self.label}: expands more than {self.limits.max_ratio:g} times its own size "
                "(a compression bomb); nothing was extracted"
            )


def extract_archive(archive: Path, into: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract a zip or tar archive into `into` (made if missing); returns the files written.

    Entries already in `into` are not overwritten: a clash raises `InvalidArchive` before any
    entry is moved in.
    """
    members = _archive_members(archive, limits)
    symlinks = {posixpath.normpath(m.name) for m in members if m.kind is _Kind.SYMLINK}
    problems = [f"{m.name!r} {problem}" for m in members if (problem := _member_problem(m, symlinks))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeArchive(f"{archive.name}: {problems[0]}{more}; nothing was extracted")
    staging = into.parent / f".extract-{into.name}-{secrets.token_hex(4)}"
    try:
        _extract_all(archive, staging, limits)
        return _move_into(staging, into, archive.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_archive(path: Path) -> bool:
    """Whether `path` is a zip or tar archive (judged from its bytes, not its name)."""
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _archive_members(archive: Path, limits: ArchiveLimits) -> list[_Member]:
    """Every member of a zip or tar archive, within the limits; or `InvalidArchive`, `ArchiveTooLarge`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return _zip_members(zf, archive, limits)
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                return _counted(map(_tar_member, tar), _tar_budget(archive, limits))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidArchive(f"{archive.name}: unreadable archive ({exc})") from exc
    raise InvalidArchive(f"{archive.name}: not a zip or tar archive")


def _counted(members: Iterable[_Member], budget: _Budget) -> list[_Member]:
    """The members, counted as they are read, so a bomb stops the reading once it passes a limit."""
    listed = []
    for member in members:
        budget.add_member()
        budget.add_bytes(member.size)
        listed.append(member)
    return listed


def _tar_budget(archive: Path, limits: ArchiveLimits) -> _Budget:
    """A tar's whole stream is compressed as one, so its ratio is the archive file's: a cap on its total."""
    ratio_cap = max(_RATIO_FLOOR_BYTES, int(limits.max_ratio * archive.stat().st_size))
    return _Budget(limits, archive.name, ratio_cap)


def _zip_members(zf: zipfile.ZipFile, archive: Path, limits: ArchiveLimits) -> list[_Member]:
    archive_size = archive.stat().st_size
    for info in zf.infolist():
        # A declared compressed size beyond the file itself is a lie; count no more than the file.
        packed = max(1, min(info.compress_size, archive_size))
        if info.file_size > max(_RATIO_FLOOR_BYTES, limits.max_ratio * packed):
            raise ArchiveTooLarge(
                f"{archive.name}: {info.filename!r} expands {info.file_size} bytes from {info.compress_size} "
                f"(more than {limits.max_ratio:g} to 1, a compression bomb); nothing was extracted"
            )
    return _counted((_zip_member(zf, info) for info in zf.infolist()), _Budget(limits, archive.name))


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    mode = info.external_attr >> 16  # the Unix mode, where the archiver stored one
    if stat.S_ISLNK(mode):
        return _Member(info.filename, _Kind.SYMLINK, zf.read(info).decode("utf-8", "replace"), info.file_size)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return _Member(info.filename, _Kind.SPECIAL)
    return _Member(info.filename, _Kind.DIR if info.is_dir() else _Kind.FILE, size=info.file_size)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym():
        return _Member(info.name, _Kind.SYMLINK, info.linkname)
    if info.islnk():
        return _Member(info.name, _Kind.HARDLINK, info.linkname)
    if info.isdir():
        return _Member(info.name, _Kind.DIR)
    if info.isreg():
        return _Member(info.name, _Kind.FILE, size=info.size)
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


def _extract_all(archive: Path, staging: Path, limits: ArchiveLimits) -> None:
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _extract_zip(zf, staging, _Budget(limits, archive.name))
            return
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(staging, filter=_counting_data_filter(_tar_budget(archive, limits)))
    except tarfile.FilterError as exc:
        # The standard library's own guard, in case it knows a trick the checks above miss.
        raise UnsafeArchive(f"{archive.name}: {exc}; nothing was extracted") from exc
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise InvalidArchive(f"{archive.name}: corrupt archive ({exc}); nothing was extracted") from exc


def _extract_zip(zf: zipfile.ZipFile, staging: Path, budget: _Budget) -> None:
    """Write each member by hand rather than with `extractall`, so every byte is counted as it is written."""
    for info in zf.infolist():
        budget.add_member()
        target = staging / posixpath.normpath(info.filename)  # checked above to stay inside
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, target.open("wb") as out:
            _copy_within(source, out, info.file_size, budget, f"{budget.label}: {info.filename!r}")


def _copy_within(source: IO[bytes], out: IO[bytes], declared: int, budget: _Budget, label: str) -> None:
    """Copy `source` to `out`, refusing a member that produces more than the `declared` bytes its header says."""
    written = 0
    while chunk := source.read(_COPY_CHUNK):
        written += len(chunk)
        if written > declared:
            raise ArchiveTooLarge(
                f"{label} expands past the {declared} bytes its header declares; nothing was extracted"
            )
        budget.add_bytes(len(chunk))
        out.write(chunk)


def _counting_data_filter(budget: _Budget) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's "data" filter, counting each member (and the bytes tarfile will copy for it) on the way."""

    def check(info: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        budget.add_member()
        budget.add_bytes(info.size if info.isreg() else 0)
        return tarfile.data_filter(info, path)

    return check


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
