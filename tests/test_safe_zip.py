"""Safe in-memory zip reading: path escapes, links, bombs, lying headers, bounds (zips built here)."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from ecgcmr.convert.safe_zip import iter_zip_members
from ecgcmr.errors import DataError

_CENTRAL_SIGNATURE = b"PK\x01\x02"
_LOCAL_SIGNATURE = b"PK\x03\x04"


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return path


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def patch_headers(path: Path, *, central_offset: int, local_offset: int | None,
                  fmt: str, value: int) -> None:
    """Overwrite one field of every central-directory (and local) header of a zip."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((_CENTRAL_SIGNATURE, central_offset),
                              (_LOCAL_SIGNATURE, local_offset)):
        if offset is None:
            continue
        start = data.find(signature)
        while start >= 0:
            struct.pack_into(fmt, data, start + offset, value)
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))


def test_reads_members_in_order_and_skips_directories(tmp_path: Path) -> None:
    members = [("a.dcm", b"first"), ("sub/", b""), ("sub/b.dcm", b"x" * 10_000),
               ("manifest.csv", b"id\n1\n")]
    path = make_zip(tmp_path / "ok.zip", members)
    assert list(iter_zip_members(path)) == [m for m in members if not m[0].endswith("/")]


@pytest.mark.parametrize("name, problem", [
    ("../evil", "'..' component"),
    ("a/../../evil", "'..' component"),
    ("..\\evil", "'..' component"),
    ("/etc/evil", "absolute path"),
    ("\\\\server\\share\\evil", "absolute path"),
    ("C:evil", "drive letter"),
])
def test_path_escaping_member_names_are_rejected(tmp_path: Path, name: str, problem: str
                                                 ) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    path = make_zip(scratch / "evil.zip", [("fine.dcm", b"ok"), (name, b"pwned")])
    before = files_under(tmp_path)
    with pytest.raises(DataError, match="unsafe zip member name") as err:
        list(iter_zip_members(path))
    assert problem in str(err.value) and "evil.zip" in str(err.value)
    assert files_under(tmp_path) == before  # nothing extracted anywhere
    assert not (tmp_path / "evil").exists()


def test_nothing_is_yielded_before_a_bad_member_is_found(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "late.zip", [("fine.dcm", b"ok"), ("../evil", b"x")])
    members = iter_zip_members(path)
    with pytest.raises(DataError, match="evil"):
        next(members)  # the whole directory is checked before the first member


def test_symlink_member_is_rejected(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = make_zip(tmp_path / "link.zip", [(link, b"/etc/passwd")])
    with pytest.raises(DataError, match="'link.dcm' is a symbolic link") as err:
        list(iter_zip_members(path))
    assert "link.zip" in str(err.value)


def test_zip_bomb_is_rejected_from_declared_sizes(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("bomb.dcm", "w") as stream:
            for _ in range(200):  # 200 MB of zeros -> ~200 kB compressed
                stream.write(zeros)
    assert path.stat().st_size < 2 * 2**20
    before = files_under(tmp_path)
    with pytest.raises(DataError, match="suspicious compression ratio \\(declared\\)") as err:
        next(iter_zip_members(path))
    assert "'bomb.dcm'" in str(err.value) and "209715200 bytes" in str(err.value)
    assert files_under(tmp_path) == before


def test_header_that_understates_the_size_is_caught_while_reading(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", [("liar.dcm", bytes(5 * 2**20))])
    with zipfile.ZipFile(path) as archive:
        compressed = archive.getinfo("liar.dcm").compress_size
    # declare an uncompressed size 10x the compressed one: passes the declared-ratio check
    patch_headers(path, central_offset=24, local_offset=22, fmt="<I", value=10 * compressed)
    with pytest.raises(DataError, match="'liar.dcm'") as err:
        list(iter_zip_members(path))
    assert "liar.zip" in str(err.value)


def test_total_size_bound(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "big.zip", [(f"{i}.dcm", bytes(range(256)) * 40)
                                           for i in range(5)])
    assert len(list(iter_zip_members(path, max_total_bytes=5 * 10_240))) == 5
    with pytest.raises(DataError, match="too large when uncompressed") as err:
        list(iter_zip_members(path, max_total_bytes=3 * 10_240))
    assert "'3.dcm'" in str(err.value)


def test_too_many_members(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "many.zip", [(f"{i}.dcm", b"x") for i in range(5)])
    with pytest.raises(DataError, match="too many members") as err:
        list(iter_zip_members(path, max_members=4))
    assert "expected at most 4; found 5" in str(err.value)


def test_duplicate_member_names_are_rejected(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = make_zip(tmp_path / "dup.zip", [("a.dcm", b"one"), ("a.dcm", b"two")])
    with pytest.raises(DataError, match="'a.dcm' appears twice"):
        list(iter_zip_members(path))


def test_encrypted_member_is_rejected(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "enc.zip", [("secret.dcm", b"x" * 100)])
    patch_headers(path, central_offset=8, local_offset=6, fmt="<H", value=0x1)
    with pytest.raises(DataError, match="'secret.dcm' is encrypted"):
        list(iter_zip_members(path))


def test_corrupt_member_names_the_member(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "crc.zip", [("bad.dcm", b"hello world" * 100)])
    patch_headers(path, central_offset=16, local_offset=14, fmt="<I", value=12345)  # CRC-32
    with pytest.raises(DataError, match="corrupt zip member 'bad.dcm'"):
        list(iter_zip_members(path))


def test_not_a_zip_and_missing_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable zip archive") as err:
        list(iter_zip_members(fake))
    assert "fake.zip" in str(err.value)
    with pytest.raises(DataError, match="zip file not found"):
        list(iter_zip_members(tmp_path / "absent.zip"))
