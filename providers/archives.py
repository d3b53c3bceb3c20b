"""Reading a tenant's tar or zip archive without trusting it: every limit is checked while streaming.

A tenant admin uploads archives (roles, cookbooks, modules, site files) that the web process checks and the
worker lists. Both read them here, so a hostile archive meets the same limits wherever it is opened: the
member count, the bytes it unpacks to (absolute and as a ratio to the upload, against compression bombs),
header sizes (a pax or GNU long-name header of gigabytes), and members that are not plain files or folders
(links, devices, fifos, sparse files) or whose path would leave the folder. Nothing is ever unpacked to disk
and nothing more than one read block of decompressed data is held at once, whatever the archive claims.

Limits are settings read at call time: ``LOOM_ARCHIVE_MAX_MEMBERS``, ``LOOM_ARCHIVE_MAX_UNPACKED_BYTES`` and
``LOOM_ARCHIVE_MAX_RATIO`` (applied once an archive unpacks to more than ``RATIO_FLOOR`` bytes, so a small
text file that compresses well is never refused).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from django.conf import settings

RATIO_FLOOR = 1024 * 1024
HEADER_MAX_BYTES = 64 * 1024  # a pax or GNU long-name header: a path and a few attributes, never more
READ_BLOCK = 64 * 1024
_EOCD = b"PK\x05\x06"


class ArchiveError(ValueError):
    """The archive breaks a rule; ``reason`` is the short field problem, the message says the detail."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may hold; ``from_settings`` reads the operator's values."""

    members: int
    unpacked_bytes: int
    ratio: int

    @classmethod
    def from_settings(cls) -> ArchiveLimits:
        return cls(
            members=getattr(settings, "LOOM_ARCHIVE_MAX_MEMBERS", 10_000),
            unpacked_bytes=getattr(settings, "LOOM_ARCHIVE_MAX_UNPACKED_BYTES", 256 * 1024 * 1024),
            ratio=getattr(settings, "LOOM_ARCHIVE_MAX_RATIO", 100),
        )


@dataclass(frozen=True)
class Archive:
    """What a checked archive holds: its form (``tar`` or ``zip``) and its files' paths (``./`` stripped)."""

    form: str
    files: frozenset[str]


class _Budget:
    """Counts members and unpacked bytes against the limits; raises the first limit passed, by name."""

    def __init__(self, limits: ArchiveLimits, packed: int) -> None:
        self.limits, self.packed, self.members, self.unpacked = limits, packed, 0, 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.members:
            raise ArchiveError(
                f"the archive has more than {self.limits.members} members (LOOM_ARCHIVE_MAX_MEMBERS)",
                "too many members",
            )

    def unpack(self, count: int) -> None:
        self.unpacked += count
        if self.unpacked > self.limits.unpacked_bytes:
            raise ArchiveError(
                f"the archive unpacks to more than {self.limits.unpacked_bytes} bytes "
                "(LOOM_ARCHIVE_MAX_UNPACKED_BYTES)",
                "unpacks too large",
            )
        if self.unpacked > RATIO_FLOOR and self.unpacked > self.limits.ratio * self.packed:
            raise ArchiveError(
                f"the archive unpacks to more than {self.limits.ratio} times its {self.packed} bytes "
                "(LOOM_ARCHIVE_MAX_RATIO): a compression bomb?",
                "compression ratio too high",
            )


class _MeteredReader(io.RawIOBase):
    """A decompressing stream that charges every byte it hands out to the budget before the caller sees it."""

    def __init__(self, stream: IO[bytes], budget: _Budget) -> None:
        self.stream, self.budget = stream, budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.stream.read(min(len(buffer), READ_BLOCK))
        self.budget.unpack(len(chunk))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses an extended header bigger than HEADER_MAX_BYTES before tarfile reads it into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)  # fmt: skip
        if self.type in extended and self.size > HEADER_MAX_BYTES:
            raise ArchiveError(
                f"the archive has a {self.size}-byte extended header; at most {HEADER_MAX_BYTES} are allowed",
                "oversized header",
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _check_path(name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name:
        raise ArchiveError(f"archive member {name!r} would be unpacked outside its folder", "unsafe path")
    return str(PurePosixPath(name.removeprefix("./")))


def _decompressed(data: bytes) -> IO[bytes]:
    """The tar stream inside ``data``: gzip, bzip2 and xz recognised by their magic bytes, else as it is."""
    raw = io.BytesIO(data)
    if data.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if data.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _tar_files(data: bytes, budget: _Budget) -> Iterator[str]:
    stream = io.BufferedReader(_MeteredReader(_decompressed(data), budget), buffer_size=READ_BLOCK)
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=_GuardedTarInfo) as archive:
        for member in archive:
            budget.member()
            if not (member.isfile() or member.isdir()) or member.issparse():
                raise ArchiveError(
                    f"archive member {member.name!r} is a link, device, fifo or sparse file; only files and "
                    "folders are allowed",
                    "unsafe member",
                )
            name = _check_path(member.name)
            if member.isfile():
                yield name
            archive.members.clear()  # streaming: do not keep every header in memory


def _zip_entry_count(data: bytes) -> int | None:
    """The entry count the end-of-central-directory record claims, read before zipfile parses the directory
    (a 10 MB zip can list 200,000 entries); None for ZIP64, where zipfile's own parse is the first look."""
    at = data.rfind(_EOCD, max(0, len(data) - 65_557))
    if at < 0 or len(data) < at + 22:
        return None
    (entries,) = struct.unpack_from("<H", data, at + 10)
    return None if entries == 0xFFFF else int(entries)


def _zip_files(data: bytes, budget: _Budget) -> Iterator[str]:
    claimed = _zip_entry_count(data)
    if claimed is not None and claimed > budget.limits.members:
        budget.members = claimed - 1
        budget.member()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            budget.member()
            name = _check_path(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool recorded only permissions
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(
                    f"archive member {info.filename!r} is a link or special file; only files and folders are allowed",
                    "unsafe member",
                )
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted", "encrypted member")
            # Reading to the end checks the CRC; the budget counts what really comes out, not what is claimed.
            with archive.open(info) as member:
                while chunk := member.read(READ_BLOCK):
                    budget.unpack(len(chunk))
            yield name


def inspect_archive(data: bytes, limits: ArchiveLimits | None = None) -> Archive:
    """Check ``data`` as a tar (plain, gzip, bzip2, xz) or zip archive within ``limits`` (the settings by
    default); ArchiveError says which rule it breaks."""
    budget = _Budget(limits or ArchiveLimits.from_settings(), len(data))
    form = "zip" if zipfile.is_zipfile(io.BytesIO(data)) else "tar"
    reader = _zip_files if form == "zip" else _tar_files
    try:
        files = frozenset(reader(data, budget))
    except ArchiveError:
        raise
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"the zip archive is damaged: {error}", "damaged archive") from None
    except NotImplementedError as error:
        raise ArchiveError(f"the zip archive uses an unsupported compression: {error}", "unsupported") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as error:
        raise ArchiveError(
            f"an archive resource must be a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or zip file: {error}",
            "not a tar or zip archive",
        ) from None
    return Archive(form=form, files=files)
