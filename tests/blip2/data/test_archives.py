"""Archive extraction: members that would escape the folder, and bombs, refused with nothing left behind."""

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from blip2.data.archives import ArchiveLimits, extract_archive, is_archive
from blip2.errors import ArchiveTooLarge, InvalidArchive, UnsafeArchive
from tests.support.archives import tar_gz


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
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


# --- bombs ---


def zip_deflated(members: dict[str, bytes]) -> bytes:
    return zip_bytes(members, zipfile.ZIP_DEFLATED)


def left_in(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_zip_of_zeros_is_refused_by_the_ratio_rule_with_the_default_limits(tmp_path: Path) -> None:
    archive = write(tmp_path / "bomb.zip", zip_deflated({"zeros.bin": bytes(8 << 20)}))
    assert len(archive.read_bytes()) < (8 << 20) // 500  # deflate squeezes zeros about 1000:1

    with pytest.raises(
        ArchiveTooLarge, match=r"'zeros.bin' expands 8388608 bytes from \d+ .*compression bomb"
    ) as caught:
        extract_archive(archive, tmp_path / "out")

    assert caught.value.code == "archive_too_large"
    assert isinstance(caught.value, UnsafeArchive)
    assert left_in(tmp_path) == ["bomb.zip"]


def test_a_1_kb_zip_claiming_10_gb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.bin", bytes(1000))
        zf.infolist()[0].file_size = 10 * 2**30  # what the central directory, written on close, will claim
    archive = write(tmp_path / "bomb.zip", buffer.getvalue())
    assert len(buffer.getvalue()) < 1024

    with pytest.raises(ArchiveTooLarge, match="expands 10737418240 bytes from"):
        extract_archive(archive, tmp_path / "out")  # default limits: 10 GB is under the total, not the ratio
    assert left_in(tmp_path) == ["bomb.zip"]


def test_tar_gz_of_zeros_is_refused_by_the_ratio_rule_with_the_default_limits(tmp_path: Path) -> None:
    archive = write(tmp_path / "bomb.tar.gz", tar_gz({"data/zeros.bin": bytes(8 << 20), "data/ok.txt": b"ok"}))

    with pytest.raises(ArchiveTooLarge, match="more than 200 times its own size"):
        extract_archive(archive, tmp_path / "out")
    assert left_in(tmp_path) == ["bomb.tar.gz"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_total_size_limit(tmp_path: Path, kind: str) -> None:
    members = {f"part{i}.bin": os.urandom(100_000) for i in range(10)}  # 1 MB that does not compress
    archive = write(tmp_path / f"big.{kind}", zip_deflated(members) if kind == "zip" else tar_gz(members))
    limits = ArchiveLimits(max_total_bytes=500_000)

    with pytest.raises(ArchiveTooLarge, match="expands to more than 500000 bytes"):
        extract_archive(archive, tmp_path / "out", limits=limits)
    assert left_in(tmp_path) == [f"big.{kind}"]

    assert len(extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_total_bytes=1_000_000))) == 10


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_count_limit(tmp_path: Path, kind: str) -> None:
    members = {f"f{i}.txt": b"x" for i in range(50)}
    archive = write(tmp_path / f"many.{kind}", zip_deflated(members) if kind == "zip" else tar_gz(members))

    with pytest.raises(ArchiveTooLarge, match="more than 10 members"):
        extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_members=10))
    assert left_in(tmp_path) == [f"many.{kind}"]


def test_low_ratio_limit_set_by_the_caller(tmp_path: Path) -> None:
    text = "".join(f'{{"image": "{i:012d}.jpg", "caption": "a photo of a cat"}}\n' for i in range(40_000)).encode()
    archive = write(tmp_path / "captions.zip", zip_deflated({"captions.jsonl": text}))

    with pytest.raises(ArchiveTooLarge, match="more than 2 to 1"):
        extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_ratio=2))
    assert left_in(tmp_path) == ["captions.zip"]


def test_real_data_passes_the_default_limits(tmp_path: Path) -> None:
    # Repetitive JSON lines (~2 MB, compressing about 10:1) and a small file of zeros, which compresses
    # far past the ratio but is under the size below which the ratio is not held against a file.
    text = "".join(f'{{"image": "{i:012d}.jpg", "caption": "a photo of a cat"}}\n' for i in range(40_000)).encode()
    archive = write(tmp_path / "data.zip", zip_deflated({"captions.jsonl": text, "padding.bin": bytes(500_000)}))

    extract_archive(archive, tmp_path / "out")

    assert (tmp_path / "out/captions.jsonl").read_bytes() == text
    assert (tmp_path / "out/padding.bin").stat().st_size == 500_000


def test_a_member_that_produces_more_than_its_header_declares_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile itself stops at the declared size; were a reader ever to trust the stream instead,
    # the copy counts what is written and stops there.
    archive = write(tmp_path / "liar.zip", zip_deflated({"a.txt": b"A" * 100}))
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info: io.BytesIO(b"A" * 5_000_000))

    with pytest.raises(ArchiveTooLarge, match=r"'a\.txt' expands past the 100 bytes its header declares"):
        extract_archive(archive, tmp_path / "out")
    assert left_in(tmp_path) == ["liar.zip"]


def test_a_tar_is_read_only_as_far_as_its_limits(tmp_path: Path) -> None:
    # The archive breaks off after 60% of its stream: refused for its member count, not as unreadable,
    # which shows the reading stopped at the 11th member instead of decompressing the whole stream.
    whole = tar_gz({f"f{i}.bin": os.urandom(10_000) for i in range(50)})
    archive = write(tmp_path / "cut.tar.gz", whole[: len(whole) * 6 // 10])
    with pytest.raises(InvalidArchive, match="unreadable"):
        extract_archive(archive, tmp_path / "out")

    with pytest.raises(ArchiveTooLarge, match="more than 10 members"):
        extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_members=10))
    assert left_in(tmp_path) == ["cut.tar.gz"]
