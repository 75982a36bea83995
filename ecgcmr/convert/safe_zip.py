"""Read the members of an untrusted zip archive in memory, with bounds.

A zip downloaded from a data provider (UK Biobank bulk fields arrive as one zip per subject
and field) is treated as hostile until read: nothing is extracted to disk, and each of these
is refused with a :class:`~ecgcmr.errors.DataError` naming the zip and the member:

* a member name that could escape a folder if it were ever extracted: an absolute path
  (``/etc/x``, ``\\\\server\\x``), a drive letter (``C:x``), a ``..`` component, a NUL byte;
* a symbolic link (Unix mode bits in the member's external attributes);
* an encrypted member (we could not read it anyway);
* two members with the same name (which one would a reader use?);
* more than ``max_members`` members;
* a total uncompressed size above ``max_total_bytes``, or a member whose uncompressed size is
  more than ``max_ratio`` times its compressed size (a zip bomb; members up to 1 MiB may have
  any ratio, since they cannot blow up memory). Both are checked twice:
  against the sizes the central directory *declares*, before anything is decompressed, and by
  counting the bytes actually produced while reading, because headers can lie.

Members are decompressed one at a time in chunks, so a bomb is stopped after at most one chunk
past the bound, never after filling memory.
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

from ecgcmr.errors import DataError

DEFAULT_MAX_TOTAL_BYTES = 2 * 2**30  # a UK Biobank SAX cine zip (field 20209) is ~50-150 MB
# DICOM images deflate ~2-6x; 100x is far beyond any image data and far below a bomb's ~1000x.
DEFAULT_MAX_RATIO = 100.0
DEFAULT_MAX_MEMBERS = 20_000  # UKB SAX: ~50 frames x ~10-15 slices (+ a manifest) < 1,000
_CHUNK_BYTES = 2**20  # decompress 1 MiB at a time
# A member that inflates to at most 1 MiB cannot be a bomb on its own (an all-background
# image may compress 1000x); many of them are bounded by max_total_bytes.
_RATIO_SLACK_BYTES = 2**20
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_ZIP_ENCRYPTED_FLAG = 0x1  # general purpose bit 0 (PKWARE APPNOTE.TXT section 4.4.4)


def iter_zip_members(
    path: str | PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, content)`` for every file member of the zip at ``path``, in archive order.

    Directory entries are skipped. Every member is validated (see the module docstring)
    *before* the first one is yielded, so a bad archive fails before any work is done on it;
    the byte counts are checked again while each member is decompressed. Raises
    :class:`DataError` naming the zip (and the member) for any violation, for a file that is
    not a zip, and for a corrupt member (CRC mismatch, truncated data).
    """
    if not Path(path).is_file():
        raise DataError("zip file not found", path=path, expected="a .zip archive")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"not a readable zip archive ({type(exc).__name__}: {exc})", path=path,
                        expected="a .zip archive") from exc
    with archive:
        members = check_zip_members(archive.infolist(), path, max_total_bytes=max_total_bytes,
                                    max_ratio=max_ratio, max_members=max_members)
        budget = _ByteBudget(max_total_bytes)
        for info in members:
            yield info.filename, _read_member(archive, info, path, budget, max_ratio)


def check_zip_members(
    infos: list[zipfile.ZipInfo],
    path: str | PathLike[str],
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[zipfile.ZipInfo]:
    """Validate the central directory; return the file members (directories dropped).

    Checks names, symlinks, encryption, duplicates, the member count and the *declared*
    sizes. Raises :class:`DataError` naming the zip and the offending member.
    """
    if len(infos) > max_members:
        raise DataError("zip has too many members", path=path,
                        expected=f"at most {max_members}", found=str(len(infos)))
    seen: set[str] = set()
    files = []
    declared_total = 0
    for info in infos:
        check_member_name(info.filename, path)
        _check_member_kind(info, path)
        if info.filename in seen:
            raise DataError(f"zip member {info.filename!r} appears twice", path=path,
                            expected="unique member names")
        seen.add(info.filename)
        if info.is_dir():
            continue
        _check_ratio(info.filename, info.file_size, info.compress_size, max_ratio, path,
                     what="declared")
        declared_total += info.file_size
        if declared_total > max_total_bytes:
            raise DataError("zip is too large when uncompressed (declared sizes)", path=path,
                            expected=f"at most {max_total_bytes} bytes in all",
                            found=f"more than that by member {info.filename!r}")
        files.append(info)
    return files


def check_member_name(name: str, path: str | PathLike[str]) -> None:
    """Refuse a member name that is absolute, has a drive letter, ``..`` or a NUL byte."""
    unified = name.replace("\\", "/")
    parts = unified.split("/")
    problem = None
    if not name:
        problem = "an empty name"
    elif "\x00" in name:
        problem = "a NUL byte"
    elif unified.startswith("/"):
        problem = "an absolute path"
    elif _DRIVE_LETTER.match(unified):
        problem = "a drive letter"
    elif ".." in parts:
        problem = "a '..' component"
    if problem is not None:
        raise DataError(f"unsafe zip member name {name!r}: {problem}", path=path,
                        expected="relative member names inside the archive")


def _check_member_kind(info: zipfile.ZipInfo, path: str | PathLike[str]) -> None:
    # the Unix mode lives in the high 16 bits of external_attr (APPNOTE.TXT 4.4.15)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataError(f"zip member {info.filename!r} is a symbolic link", path=path,
                        expected="regular files only")
    if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
        raise DataError(f"zip member {info.filename!r} is encrypted", path=path,
                        expected="unencrypted members")


def _check_ratio(name: str, size: int, compressed: int, max_ratio: float,
                 path: str | PathLike[str], *, what: str) -> None:
    if size > _RATIO_SLACK_BYTES and size > max_ratio * max(compressed, 1):
        raise DataError(f"zip member {name!r} has a suspicious compression ratio ({what}); "
                        "refusing a possible zip bomb", path=path,
                        expected=f"uncompressed <= {max_ratio:g} x compressed",
                        found=f"{size} bytes from {compressed} compressed bytes")


class _ByteBudget:
    """Bytes actually decompressed so far, across members, against the total bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int, name: str, path: str | PathLike[str]) -> None:
        self.used += n
        if self.used > self.limit:
            raise DataError("zip is too large when uncompressed (bytes read)", path=path,
                            expected=f"at most {self.limit} bytes in all",
                            found=f"more than that while reading member {name!r}")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str | PathLike[str],
                 budget: _ByteBudget, max_ratio: float) -> bytes:
    """Decompress one member in chunks, counting bytes against the declared size and bounds."""
    chunks = []
    count = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                count += len(chunk)
                budget.spend(len(chunk), info.filename, path)
                if count > info.file_size:
                    raise DataError(f"zip member {info.filename!r} is larger than its header "
                                    "declares", path=path, expected=f"{info.file_size} bytes",
                                    found=f"more than {count - len(chunk)}")
                _check_ratio(info.filename, count, info.compress_size, max_ratio, path,
                             what="while reading")
                chunks.append(chunk)
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile (CRC), zlib.error, EOFError, OSError ...
        raise DataError(f"corrupt zip member {info.filename!r} ({type(exc).__name__}: {exc})",
                        path=path, expected="a readable archive") from exc
    return b"".join(chunks)
