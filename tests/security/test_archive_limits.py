"""Hostile archives, uploaded by a tenant admin: bombs, floods of members, giant headers and special files.

Every archive here is built in the test and sent through the real upload endpoint; each refusal is a 400
naming the rule on the ``content`` field with nothing stored. The worker reads archives through the same
limits (``helpers.archive_members``), shown on an archive written straight into the table as if it had
been stored before a limit existed. Limits are lowered with ``override_settings`` where building an
archive of the default size would only slow the suite; the ratio check runs at its default.
"""

from __future__ import annotations

import io
import stat
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable

import pytest
from django.test import override_settings

from providers.archives import ArchiveError, ArchiveLimits, inspect_archive
from providers.automators.helpers import archive_members
from providers.drivers.base import TerminalError
from providers.models import PluginResource

pytestmark = pytest.mark.django_db

ARCHIVES = "/api/v2/plugins/automatortypes/shell/archives"
MIB = 1024 * 1024


def tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz", **options: object) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, **options) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def zipped(members: list[zipfile.ZipInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            if isinstance(member, zipfile.ZipInfo):
                archive.writestr(member, b"target")
            else:
                archive.writestr(*member)
    return buffer.getvalue()


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/shadow" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    return info


def refused(client, data: bytes, *, name: str = "site") -> str:
    """Upload ``data``; assert the one error shape, nothing stored; return the field problem."""
    response = client.post(f"{ARCHIVES}/{name}", data=data, content_type="application/octet-stream")
    assert response.status_code == 400, response.content
    assert not PluginResource.objects.exists()
    error = response.json()["error"]
    assert error["message"]
    return str(error["fields"]["content"][0])


@pytest.fixture
def admin_client(admin_a, client_for: Callable):
    return client_for(admin_a)


ZEROS = b"\x00" * (2 * MIB)


@pytest.mark.parametrize("build", [
    lambda: tar([("bomb.bin", ZEROS)], "w:gz"),
    lambda: tar([("bomb.bin", ZEROS)], "w:bz2"),
    lambda: tar([("bomb.bin", ZEROS)], "w:xz"),
    lambda: zipped([("bomb.bin", ZEROS)]),
], ids=["tar.gz", "tar.bz2", "tar.xz", "zip"])  # fmt: skip
def test_a_compression_bomb_is_refused_at_the_default_ratio(admin_client, build):
    data = build()
    assert len(data) * 100 < len(ZEROS), "the test archive really compresses past the ratio"
    assert refused(admin_client, data) == "compression ratio too high"


@override_settings(LOOM_ARCHIVE_MAX_UNPACKED_BYTES=MIB, LOOM_ARCHIVE_MAX_RATIO=10**6)
@pytest.mark.parametrize("build", [
    lambda: tar([("a.bin", ZEROS[: MIB // 2]), ("b.bin", ZEROS[: MIB // 2 + 10_000])]),
    lambda: zipped([("a.bin", ZEROS[: MIB // 2]), ("b.bin", ZEROS[: MIB // 2 + 10_000])]),
], ids=["tar", "zip"])  # fmt: skip
def test_unpacked_bytes_are_counted_across_members(admin_client, build):
    assert refused(admin_client, build()) == "unpacks too large"


def test_a_zip_that_lies_about_its_sizes_is_counted_by_what_comes_out(admin_client):
    """The header claims 10 bytes; the deflated data is 2 MiB of zeros. zipfile stops at the claimed size
    and the CRC then fails: refused as damaged, never trusted as small."""
    data = bytearray(zipped([("liar.bin", ZEROS)]))
    for header, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(header)
        data[at + size_at : at + size_at + 4] = (10).to_bytes(4, "little")
    assert refused(admin_client, bytes(data)) in {"damaged archive", "compression ratio too high"}


@override_settings(LOOM_ARCHIVE_MAX_MEMBERS=50)
@pytest.mark.parametrize("build", [
    lambda: tar([(f"f{n}.txt", b"x") for n in range(51)]),
    lambda: zipped([(f"f{n}.txt", b"x") for n in range(51)]),
    lambda: tar([special(f"d{n}", tarfile.DIRTYPE) for n in range(51)], "w"),
], ids=["tar-files", "zip-files", "tar-folders"])  # fmt: skip
def test_too_many_members_are_refused(admin_client, build):
    assert refused(admin_client, build()) == "too many members"


@override_settings(LOOM_ARCHIVE_MAX_MEMBERS=50)
def test_fifty_members_are_still_fine(admin_client):
    data = tar([(f"f{n}.txt", b"x") for n in range(50)])
    response = admin_client.post(f"{ARCHIVES}/site", data=data, content_type="application/octet-stream")
    assert response.status_code == 201, response.content


def test_a_giant_pax_header_is_refused_before_it_is_read():
    data = tar([("a.txt", b"x")], "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x" * 200_000})
    with pytest.raises(ArchiveError) as caught:
        inspect_archive(data)
    assert caught.value.reason == "oversized header"


def test_a_giant_gnu_long_name_is_refused(admin_client):
    data = tar([("d/" * 50_000 + "a.txt", b"x")], "w", format=tarfile.GNU_FORMAT)
    assert refused(admin_client, data) == "oversized header"


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                                  tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE], ids=lambda kind: repr(kind))  # fmt: skip
def test_tar_members_that_are_not_files_or_folders_are_refused(admin_client, kind):
    assert refused(admin_client, tar([("ok.txt", b"x"), special("evil", kind)])) == "unsafe member"


def test_a_zip_symlink_is_refused(admin_client):
    link = zipfile.ZipInfo("evil")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert refused(admin_client, zipped([("ok.txt", b"x"), link])) == "unsafe member"


def test_an_encrypted_zip_member_is_refused(admin_client):
    data = bytearray(zipped([("secret.txt", b"x")]))
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(header)
        data[at + flags_at] |= 0x1
    assert refused(admin_client, bytes(data)) == "encrypted member"


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/root/.ssh/authorized_keys", "a/../../b"])
def test_zip_paths_that_leave_the_folder_are_refused(admin_client, name):
    assert refused(admin_client, zipped([(name, b"x")])) == "unsafe path"


@override_settings(LOOM_IMPORT_MAX_BYTES=1000)
def test_a_multipart_file_over_the_size_limit_is_refused_by_its_size(admin_client):
    response = admin_client.post(f"{ARCHIVES}/site", {"file": io.BytesIO(b"x" * 2000)}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["content"] == ["too large"]
    assert not PluginResource.objects.exists()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_ordinary_archives_of_every_form_are_accepted(admin_client, mode):
    folder = special("roles/web", tarfile.DIRTYPE)
    data = tar([folder, ("roles/web/tasks/main.yml", b"- ping:\n"), ("./README", b"hi")], mode)
    response = admin_client.post(f"{ARCHIVES}/site", data=data, content_type="application/octet-stream")
    assert response.status_code == 201, response.content
    assert inspect_archive(data).files == {"roles/web/tasks/main.yml", "README"}


def test_the_worker_refuses_a_stored_bomb_as_a_terminal_error():
    """An archive stored before the limits existed: the worker's listing meets the same limits."""
    bomb = tar([("bomb.bin", ZEROS)])
    with pytest.raises(TerminalError, match="compression ratio"):
        archive_members(bomb)


def test_checking_a_bomb_holds_only_a_read_block_in_memory():
    """64 MiB of zeros behind 64 KiB of gzip, checked with limits high enough to read it all: the peak of
    Python allocations stays a few read blocks, not the unpacked size."""
    data = tar([("big.bin", b"\x00" * (64 * MIB))])
    limits = ArchiveLimits(members=10, unpacked_bytes=1024 * MIB, ratio=10**6)
    tracemalloc.start()
    try:
        assert inspect_archive(data, limits).files == {"big.bin"}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"peak {peak} bytes while checking"
